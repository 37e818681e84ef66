package prometheus

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GroupStats is what GroupStatsCollector exports for one consumer group.
type GroupStats struct {
	Stream, Group string
	// Lag is the number of entries not yet delivered to the group.
	Lag int64
	// Pending is the number of entries delivered and not acknowledged.
	Pending int64
	// OldestPendingAge is the age of the oldest pending entry; 0 when none.
	OldestPendingAge time.Duration
}

// StatsFunc reads the stats of the groups to export. It is called on every
// scrape, with a context that ends after GroupStatsOptions.Timeout.
type StatsFunc func(ctx context.Context) ([]GroupStats, error)

// GroupStatsOptions configures a GroupStatsCollector. The zero value of every
// field means its default.
type GroupStatsOptions struct {
	// Namespace starts every metric name. Default "streamtx".
	Namespace string
	// ConstLabels are added to every metric. Default none.
	ConstLabels prometheus.Labels
	// Timeout bounds one call of the StatsFunc. Default 5s.
	Timeout time.Duration
}

// GroupStatsCollector is a prometheus.Collector of gauges read from Redis at
// scrape time through a StatsFunc: streamtx_group_lag,
// streamtx_group_pending and streamtx_group_oldest_pending_age_seconds, with
// the labels stream and group, plus streamtx_group_stats_up and
// streamtx_group_stats_errors_total. When the StatsFunc fails, the scrape
// carries up = 0 and the error count, and no group gauges. A (stream, group)
// returned twice is exported once, the first time. Label values that are not
// valid UTF-8 have the invalid bytes replaced by U+FFFD.
//
// It is safe for concurrent use; concurrent scrapes call the StatsFunc
// concurrently.
type GroupStatsCollector struct {
	fn      StatsFunc
	timeout time.Duration

	lag, pending, age, up *prometheus.Desc
	errors                prometheus.Counter
}

var _ prometheus.Collector = (*GroupStatsCollector)(nil)

// NewGroupStatsCollector returns a collector that calls fn on every scrape.
// Register it with a prometheus.Registerer.
func NewGroupStatsCollector(fn StatsFunc, opts GroupStatsOptions) *GroupStatsCollector {
	ns := opts.Namespace
	if ns == "" {
		ns = "streamtx"
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	labels := []string{"stream", "group"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "group", name), help, labels, opts.ConstLabels)
	}
	return &GroupStatsCollector{
		fn:      fn,
		timeout: timeout,
		lag:     desc("lag", "Entries of the stream not yet delivered to the group.", labels),
		pending: desc("pending", "Entries delivered to the group and not acknowledged.", labels),
		age:     desc("oldest_pending_age_seconds", "Age of the group's oldest pending entry; 0 when nothing is pending.", labels),
		up:      desc("stats_up", "1 when the group stats were read at this scrape, 0 when reading them failed.", nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "group", Name: "stats_errors_total", ConstLabels: opts.ConstLabels,
			Help: "Scrapes at which reading the group stats failed.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (c *GroupStatsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.pending
	ch <- c.age
	ch <- c.up
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector: it calls the StatsFunc.
func (c *GroupStatsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	stats, err := c.fn(ctx)
	if err != nil {
		c.errors.Inc()
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		c.errors.Collect(ch)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	c.errors.Collect(ch)
	seen := make(map[[2]string]bool, len(stats))
	for _, s := range stats {
		stream, group := labelValue(s.Stream), labelValue(s.Group)
		k := [2]string{stream, group}
		if seen[k] {
			continue
		}
		seen[k] = true
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(s.Lag), stream, group)
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(s.Pending), stream, group)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, s.OldestPendingAge.Seconds(), stream, group)
	}
}
