package prometheus

import (
	"context"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// GroupStats is what GroupStatsCollector exports for one consumer group of a
// stream, or of one partition of a topic.
type GroupStats struct {
	Stream, Group string
	// Topic, when set, says that Stream is partition Partition of the topic
	// Topic: the stats are exported as streamtx_partition_* with the labels
	// topic, group and partition, instead of streamtx_group_* with stream and
	// group. Default "": Stream is a plain stream, and Partition is ignored.
	Topic     string
	Partition int
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
// the labels stream and group; for the partitions of topics (GroupStats.Topic
// set) streamtx_partition_lag, streamtx_partition_pending and
// streamtx_partition_oldest_pending_age_seconds, with the labels topic, group
// and partition; plus streamtx_group_stats_up and
// streamtx_group_stats_errors_total. When the StatsFunc fails, the scrape
// carries up = 0 and the error count, and no group or partition gauges. A
// (stream, group) or (topic, group, partition) returned twice is exported
// once, the first time. Label values that are not valid UTF-8 have the
// invalid bytes replaced by U+FFFD.
//
// It is safe for concurrent use; concurrent scrapes call the StatsFunc
// concurrently.
type GroupStatsCollector struct {
	fn      StatsFunc
	timeout time.Duration

	lag, pending, age, up         *prometheus.Desc
	partLag, partPending, partAge *prometheus.Desc
	errors                        prometheus.Counter
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
	partLabels := []string{"topic", "group", "partition"}
	desc := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "group", name), help, labels, opts.ConstLabels)
	}
	partDesc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "partition", name), help, partLabels, opts.ConstLabels)
	}
	return &GroupStatsCollector{
		fn:          fn,
		timeout:     timeout,
		lag:         desc("lag", "Entries of the stream not yet delivered to the group.", labels),
		pending:     desc("pending", "Entries delivered to the group and not acknowledged.", labels),
		age:         desc("oldest_pending_age_seconds", "Age of the group's oldest pending entry; 0 when nothing is pending.", labels),
		partLag:     partDesc("lag", "Entries of the topic partition's stream not yet delivered to the group."),
		partPending: partDesc("pending", "Entries of the topic partition delivered to the group and not acknowledged."),
		partAge:     partDesc("oldest_pending_age_seconds", "Age of the group's oldest pending entry of the topic partition; 0 when nothing is pending."),
		up:          desc("stats_up", "1 when the group stats were read at this scrape, 0 when reading them failed.", nil),
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
	ch <- c.partLag
	ch <- c.partPending
	ch <- c.partAge
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
	type series struct{ topic, stream, group, partition string }
	seen := make(map[series]bool, len(stats))
	for _, s := range stats {
		k := series{group: labelValue(s.Group)}
		lag, pending, age := c.lag, c.pending, c.age
		var lv []string
		if s.Topic != "" {
			k.topic, k.partition = labelValue(s.Topic), strconv.Itoa(s.Partition)
			lag, pending, age = c.partLag, c.partPending, c.partAge
			lv = []string{k.topic, k.group, k.partition}
		} else {
			k.stream = labelValue(s.Stream)
			lv = []string{k.stream, k.group}
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		ch <- prometheus.MustNewConstMetric(lag, prometheus.GaugeValue, float64(s.Lag), lv...)
		ch <- prometheus.MustNewConstMetric(pending, prometheus.GaugeValue, float64(s.Pending), lv...)
		ch <- prometheus.MustNewConstMetric(age, prometheus.GaugeValue, s.OldestPendingAge.Seconds(), lv...)
	}
}
