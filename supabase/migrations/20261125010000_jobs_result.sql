-- What a completed job reports besides its output files (for splat jobs: the manifest with image and
-- SfM counts, metrics and timings), so the web app can show it without fetching manifest.json.
alter table public.jobs add column if not exists result jsonb;
