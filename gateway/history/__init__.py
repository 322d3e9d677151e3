"""History of a tag from the time-series database, for ``GET /api/v1/assets/{id}/history`` (issue 7).

Which store answers, by ``sinks.influx`` (``history`` defaults to ``auto``):

- ``enabled: false``, or ``history: off``: no reader; the route answers from the in-memory ring
  (``api.history_per_tag`` samples per tag), ``store: "local"``.
- ``api: v1`` with ``history: auto`` or ``influxql``: :class:`InfluxHistory`, InfluxQL on InfluxDB 1.x's
  ``GET /query`` with ``db=<database>`` and basic auth from ``username``/``password``; ``store: "influx"``.
- ``api: v2`` with ``history: auto`` or ``influxql``: :class:`InfluxHistory` on the 1.x-compatible ``GET /query``
  of InfluxDB 2.x/3.x with ``db=<bucket>`` and ``Authorization: Token <token>``; ``store: "influx"``. InfluxDB 2.x
  answers only for a database that a DBRP mapping ties to a bucket; its documentation (2.7) says every bucket gets a
  virtual mapping, database = the bucket's name with retention policy ``autogen``, except that a bucket named
  ``db/rp`` maps to database ``db``: such a bucket (or a release without virtual mappings) needs
  ``influx v1 dbrp create --db <bucket> --rp autogen --default --bucket-id <id>``. InfluxDB 3 takes the database
  name as ``db`` directly.
- ``history: victoriametrics`` (with either API; VictoriaMetrics takes both writes): :class:`VictoriaMetricsHistory`,
  MetricsQL and raw exports; ``store: "victoriametrics"``. String tags are not answered there (VictoriaMetrics
  keeps no strings) and fall back to the ring.

``auto`` is InfluxQL for ``api: v2`` too: it is InfluxDB's own v2 API, and nothing in the configuration tells
InfluxDB apart from VictoriaMetrics, which answers no InfluxQL and so has to be named. Pointed at the wrong kind
of server, the reader fails and the route falls back, so a wrong choice costs history depth, never wrong data.

Any failure (connection refused, timeout, an HTTP or query error, an unparsable answer, a string tag on
VictoriaMetrics) raises :class:`HistoryUnavailable`; the route then answers from the local ring with
``store: "local"``. Both readers return only Good samples: raw, the newest ``limit`` points in the range; with a
step, buckets aligned on multiples of the step since the epoch (the local ring aligns them on its first sample),
with the mean and the sample count.
"""

from __future__ import annotations

from gateway.history.base import HistoryReader, HistoryRow, HistoryUnavailable
from gateway.history.influxql import InfluxHistory
from gateway.history.victoriametrics import VictoriaMetricsHistory
from gateway.sinks.influx import InfluxSinkConfig

APP_STATE_KEY = "influx_history"  # where the runtime puts the reader on the FastAPI app's state

__all__ = ["APP_STATE_KEY", "HistoryReader", "HistoryRow", "HistoryUnavailable", "InfluxHistory",
           "VictoriaMetricsHistory", "history_reader"]


def history_reader(config: InfluxSinkConfig) -> HistoryReader | None:
    """The reader ``sinks.influx`` asks for, or None when history stays local."""
    if not config.enabled or config.history == "off":
        return None
    if config.history == "victoriametrics":
        return VictoriaMetricsHistory(config)
    return InfluxHistory(config)  # "influxql", and "auto" for either API
