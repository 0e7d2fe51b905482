-- A job row's owner_id is pinned once set (issue 13, tenant isolation). The daemon already refuses a job
-- id held by another owner (its ledger's atomic claim); this keeps the row safe from any other writer
-- too. The rest of the guard is unchanged from 20261125000000_jobs.sql.

create or replace function public.jobs_guard() returns trigger
language plpgsql as $$
declare
  old_terminal boolean;
begin
  new.updated_at := now();
  if tg_op = 'UPDATE' then
    old_terminal := old.status in ('completed', 'failed', 'canceled');
    if new.attempt < old.attempt then
      return null;  -- stale attempt: keep the newer attempt's state
    end if;
    if new.attempt = old.attempt and old_terminal then
      return null;  -- the attempt already ended; late progress must not reopen it
    end if;
    if new.attempt = old.attempt then
      new.progress := greatest(new.progress, old.progress);
    end if;
    if new.heartbeat_at is null or new.heartbeat_at < old.heartbeat_at then
      new.heartbeat_at := old.heartbeat_at;
    end if;
    new.created_at := old.created_at;
    -- a row belongs to its first owner for good: no later write (a reused job id, a bug) moves it
    -- into another customer's view (row-level security filters on owner_id)
    if old.owner_id is not null then
      new.owner_id := old.owner_id;
    end if;
    -- started_at is when the job first started, whichever attempt it is on now
    new.started_at := coalesce(old.started_at, new.started_at);
  end if;
  if new.status in ('completed', 'failed', 'canceled') then
    new.finished_at := coalesce(new.finished_at, now());
  else
    new.finished_at := null;
  end if;
  return new;
end $$;

