"""Scheduling the flush: pg_cron jobs (`cron`) or the Python scheduler (`scheduler`)."""
