"""brainbot: a chat bot whose data lives in Cloudflare Workers KV."""

__version__ = "0.1.0"
