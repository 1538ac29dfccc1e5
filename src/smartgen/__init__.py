"""smartgen: queued, asynchronous AI content generation."""

__version__ = "0.1.0"
