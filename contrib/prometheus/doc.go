// Package prometheus exports streamtx metrics to Prometheus. It is a module
// of its own, so that streamtx itself does not depend on the Prometheus
// client:
//
//	go get github.com/streamtx/streamtx/contrib/prometheus
//
// Its package name is prometheus, like the client's; import it under another
// name, such as stxprom.
//
// # Consumer metrics
//
// [Metrics] is a [streamtx.Observer] and a [prometheus.Collector]: register
// it, and pass it as Config.Observer of every Consumer.
//
//	m := stxprom.NewMetrics(stxprom.Options{})
//	prometheus.MustRegister(m)
//	c, err := streamtx.NewConsumer(rdb, streamtx.Config{
//		Stream: "orders", Group: "billing", Consumer: "billing-1",
//		Observer: m,
//	}, m.InstrumentHandler(h, "orders", "billing"))
//
// It counts, with the labels stream and group (and consumer, with
// Options.ConsumerLabel):
//
//	streamtx_entries_committed_total     entries committed
//	streamtx_conflicts_total             commits refused for a state version conflict (handlers re-run)
//	streamtx_fenced_total                entries refused as no longer owned
//	streamtx_retries_total               handler failures that will be retried
//	streamtx_dead_letters_total          entries moved to the dead-letter stream
//	streamtx_claims_total                entries claimed from idle consumers
//	streamtx_errors_total                operational errors (failed reads, commits of unknown outcome, …)
//	streamtx_commit_duration_seconds     histogram of commit round trips
//
// and, through [Metrics.InstrumentHandler] or [Metrics.Middleware], with the
// labels stream and group:
//
//	streamtx_handler_duration_seconds    histogram of handler calls, failed and panicking ones included
//
// # Topics
//
// A consumer of a partitioned topic (Config.Topic) reports the events of
// each partition it owns with the partition's stream. The counters above
// label them with the topic's name as stream, all partitions together, so a
// topic adds no series per partition; pass the topic's name to
// InstrumentHandler. Its partitions get metrics of their own:
//
//	streamtx_partition_assigned            1 while the consumer owns the partition; labels topic, group, consumer, partition
//	streamtx_partition_assignments_total   partitions acquired; labels topic, group (and consumer)
//	streamtx_partition_revocations_total   partitions given up; labels topic, group (and consumer), reason
//
// The series of streamtx_partition_assigned goes when the partition is
// revoked, so the series of a group are the partitions owned, each once
// (twice for a moment when an owner lost its lease without noticing yet).
// A revocation's reason is handover (released to another member after the
// entries in hand were settled), lease_lost (the consumer paused or was cut
// off past LeaseTTL, and another member took the partition) or other.
// Partitions nobody owns show as per-partition lag without an owner:
//
//	streamtx_partition_lag unless on (topic, group, partition) streamtx_partition_assigned
//
// # Group metrics
//
// Lag, pending entries and the age of the oldest pending entry are read from
// Redis when Prometheus scrapes, by a [GroupStatsCollector] that calls a
// [StatsFunc]. [InspectStats] returns one that reads streams and the
// partitions of topics with streamtx.Inspect:
//
//	stats := stxprom.InspectStats(rdb, stxprom.Sources{
//		Streams: []string{"payments"},
//		Topics:  []string{"orders"},
//	})
//	prometheus.MustRegister(stxprom.NewGroupStatsCollector(stats, stxprom.GroupStatsOptions{}))
//
// It exports, with the labels stream and group for a stream, and topic,
// group and partition for a topic's partitions:
//
//	streamtx_group_lag                              entries not yet delivered to the group
//	streamtx_group_pending                          entries delivered and not acknowledged
//	streamtx_group_oldest_pending_age_seconds       age of the oldest pending entry (0 when none)
//	streamtx_partition_lag                          the same, per partition of a topic
//	streamtx_partition_pending
//	streamtx_partition_oldest_pending_age_seconds
//	streamtx_group_stats_up                         1 when the last read succeeded, else 0 (and no group or partition metrics)
//	streamtx_group_stats_errors_total               reads that failed
//
// A StatsFunc of your own can report other figures, or streams found at run
// time; a GroupStats with Topic set is exported per partition.
//
// The command in example/ runs a consumer and serves its metrics.
package prometheus
