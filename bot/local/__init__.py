"""Local mode, the playground: an in-memory Webex (transport), its HTTP routes, the card renderer, static files."""
