-- Progress rows for capture jobs: one row per job, written by the GPU daemon, read by the web app.
--
-- Writers are at-least-once and may arrive out of order (retried writes, an outbox replayed after a
-- Supabase outage, an instance that comes back after its job was requeued). The rules that keep the row
-- truthful therefore live here, in one trigger, not in every writer:
--   * a write from an older attempt than the row's is dropped (fencing);
--   * progress and heartbeat never go backwards within an attempt (a new attempt may start lower);
--   * a terminal status (completed, failed, canceled) is final for its attempt.

do $$ begin
  create type public.job_status as enum
    ('queued', 'running', 'requeued', 'completed', 'failed', 'canceled');
exception when duplicate_object then null;
end $$;

create table if not exists public.jobs (
  id            text primary key
                check (id ~ '^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$'),
  kind          text not null,
  status        public.job_status not null default 'queued',
  stage         text,
  progress      smallint not null default 0 check (progress between 0 and 100),
  attempt       integer not null default 0 check (attempt >= 0),
  worker_id     text,
  heartbeat_at  timestamptz,
  outputs       jsonb not null default '{}'::jsonb,
  error_code    text,
  error_message text,
  owner_id      uuid,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now(),
  started_at    timestamptz,
  finished_at   timestamptz
);

create index if not exists jobs_status_idx on public.jobs (status);
create index if not exists jobs_owner_idx on public.jobs (owner_id);

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

drop trigger if exists jobs_guard on public.jobs;
create trigger jobs_guard before insert or update on public.jobs
  for each row execute function public.jobs_guard();

-- Row-level security: the daemon writes with the service-role key (which bypasses RLS); signed-in users
-- may read their own jobs and nothing else. Nobody but the service role may write.
alter table public.jobs enable row level security;

do $$ begin
  if exists (select 1 from pg_namespace where nspname = 'auth')
     and exists (select 1 from pg_roles where rolname = 'authenticated') then
    execute 'drop policy if exists jobs_owner_read on public.jobs';
    execute 'create policy jobs_owner_read on public.jobs for select to authenticated '
            'using (owner_id = auth.uid())';
  end if;
end $$;
