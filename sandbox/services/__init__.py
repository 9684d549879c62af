"""The running stack (`sandbox up`): services, live traffic, scheduled jobs and their supervisor."""
