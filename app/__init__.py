"""hush's HTTP server: an OpenAI-compatible transcription API routed by accuracy per millisecond."""
