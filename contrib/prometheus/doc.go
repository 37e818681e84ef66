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
// # Group metrics
//
// Lag, pending entries and the age of the oldest pending entry are read from
// Redis when Prometheus scrapes, by a [GroupStatsCollector] that calls a
// function of yours. With streamtx.Inspect:
//
//	stats := func(ctx context.Context) ([]stxprom.GroupStats, error) {
//		var out []stxprom.GroupStats
//		for _, stream := range []string{"orders", "payments"} {
//			info, err := streamtx.Inspect(ctx, rdb, stream)
//			if err != nil {
//				return nil, err
//			}
//			for _, g := range info.Groups {
//				s := stxprom.GroupStats{Stream: stream, Group: g.Name, Lag: g.Lag, Pending: g.Pending}
//				if g.OldestPending != nil {
//					s.OldestPendingAge = g.OldestPending.Age
//				}
//				out = append(out, s)
//			}
//		}
//		return out, nil
//	}
//	prometheus.MustRegister(stxprom.NewGroupStatsCollector(stats, stxprom.GroupStatsOptions{}))
//
// It exports, with the labels stream and group:
//
//	streamtx_group_lag                          entries not yet delivered to the group
//	streamtx_group_pending                      entries delivered and not acknowledged
//	streamtx_group_oldest_pending_age_seconds   age of the oldest pending entry (0 when none)
//	streamtx_group_stats_up                     1 when the last read succeeded, else 0 (and no group metrics)
//	streamtx_group_stats_errors_total           reads that failed
//
// The command in example/ runs a consumer and serves its metrics.
package prometheus
