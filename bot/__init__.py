"""Webex helpdesk-triage bot."""
