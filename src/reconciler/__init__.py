"""reconciler: email marketing as code."""

__version__ = "0.4.0"

DEFAULT_PORT = 8780
"""Where `reconciler run` serves the web service unless told otherwise. Not 8025 (Mailpit's and MailHog's web UI),
1025, 1080, 2500, 3025, 5000, 8080 or 9000: the ports of the mail catchers people run beside reconciler while they
try it out, nor the usual ports of web development servers (3000, 5000, 8000, 8080)."""
