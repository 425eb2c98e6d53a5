"""The engine: dynamic batching (``batcher``, ``pacing``), the pipeline that scores a batch
with the Sentry (``pipeline``), and the model worker process (``worker``, ``worker_launch``,
``wire``, ``loop_reader``). It knows nothing about transports or requests."""
