"""The job domain shared by the API and the workers: settings, database, tables, the job lifecycle
(jobs.status) and the repository through which every state change goes, the outbox, artifact storage,
teacher resolution, API keys and the live stream. Imports neither FastAPI nor Celery."""
