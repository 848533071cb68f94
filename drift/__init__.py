"""Drift detection and alerting per region and metric.

The pieces, in the order an event meets them:

- ``signals`` turns batches of events into observations per (region, metric);
- ``metrics`` declares each watched metric with its detector and thresholds;
- ``detectors`` holds the detectors (river's, gated by effect size, and PSI for mixes);
- ``alerts`` is the alert schema and life cycle (dedupe, cooldown, recovery);
- ``sinks`` delivers alerts (Redis store for the API, topic, Prometheus, webhook);
- ``state`` snapshots the monitor to Redis so a restart keeps its history;
- ``monitor`` is the ``DriftMonitor`` BatchProcessor that ties them together;
- ``inject`` plants drift in a replay, for benchmarks and demos.

Wiring in the worker (``redis`` is a ``redis.asyncio`` client)::

    monitor = DriftMonitor(redis, [MetricsSink(), TopicSink(send_to_alerts_topic),
                                   WebhookSink(url)], keys=Keys(settings.key_prefix))

and in the API: ``app.state.alerts = AlertStore(redis, Keys(settings.key_prefix))``
with ``relevo.serving.alerts.router`` included.
"""
