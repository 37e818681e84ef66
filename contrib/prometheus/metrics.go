package prometheus

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

// Options configures Metrics. The zero value of every field means its
// default.
type Options struct {
	// Namespace starts every metric name. Default "streamtx".
	Namespace string
	// ConstLabels are added to every metric, for example the service name.
	// Default none.
	ConstLabels prometheus.Labels
	// ConsumerLabel adds the label consumer (the Consumer's name) to the
	// event counters, the commit histogram and the partition assignment and
	// revocation counters. Default false: consumer names are often per pod,
	// which multiplies the series. (streamtx_partition_assigned always has
	// it: it says which consumer owns a partition.)
	ConsumerLabel bool
	// CommitBuckets are the buckets of streamtx_commit_duration_seconds.
	// Default 0.5ms doubling to about 4s.
	CommitBuckets []float64
	// HandlerBuckets are the buckets of streamtx_handler_duration_seconds.
	// Default 0.1ms, ×4 per bucket, to about 26s.
	HandlerBuckets []float64
}

// Metrics counts a consumer's events. It implements streamtx.Observer, to be
// passed as Config.Observer (one Metrics may serve any number of consumers),
// and prometheus.Collector, to be registered once. It is safe for concurrent
// use.
type Metrics struct {
	consumerLabel bool

	committed   *prometheus.CounterVec
	conflicts   *prometheus.CounterVec
	fenced      *prometheus.CounterVec
	retries     *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	claims      *prometheus.CounterVec
	errors      *prometheus.CounterVec
	commit      *prometheus.HistogramVec
	handler     *prometheus.HistogramVec

	// Partitions of topics: assigned has the labels topic, group, consumer
	// and partition; assignments and revocations topic and group (and
	// consumer), revocations also reason.
	assigned    *prometheus.GaugeVec
	assignments *prometheus.CounterVec
	revocations *prometheus.CounterVec

	mu     sync.Mutex
	owners map[owner]int // assigned's series -> instances owning the partition
}

// owner is the label values of one streamtx_partition_assigned series.
type owner struct{ topic, group, consumer, partition string }

var (
	_ streamtx.Observer    = (*Metrics)(nil)
	_ prometheus.Collector = (*Metrics)(nil)
)

// NewMetrics returns Metrics configured by opts. Register it with a
// prometheus.Registerer before scraping.
func NewMetrics(opts Options) *Metrics {
	ns := opts.Namespace
	if ns == "" {
		ns = "streamtx"
	}
	commitBuckets := opts.CommitBuckets
	if len(commitBuckets) == 0 {
		commitBuckets = prometheus.ExponentialBuckets(0.0005, 2, 14)
	}
	handlerBuckets := opts.HandlerBuckets
	if len(handlerBuckets) == 0 {
		handlerBuckets = prometheus.ExponentialBuckets(0.0001, 4, 10)
	}
	labels := []string{"stream", "group"}     // of the event counters
	topicLabels := []string{"topic", "group"} // of the partition counters
	if opts.ConsumerLabel {
		labels = append(labels, "consumer")
		topicLabels = append(topicLabels, "consumer")
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: name, Help: help, ConstLabels: opts.ConstLabels,
		}, labels)
	}
	return &Metrics{
		consumerLabel: opts.ConsumerLabel,
		owners:        make(map[owner]int),
		committed:     counter("entries_committed_total", "Entries committed: their state changes, publishes and acknowledgement applied together.", labels...),
		conflicts:     counter("conflicts_total", "Commits refused because a state record changed since the handler read it; the handlers ran again.", labels...),
		fenced:        counter("fenced_total", "Entries whose commit or dead-lettering was refused because the consumer no longer owned them.", labels...),
		retries:       counter("retries_total", "Handler failures after which the entry is retried.", labels...),
		deadLetters:   counter("dead_letters_total", "Entries moved to the dead-letter stream.", labels...),
		claims:        counter("claims_total", "Entries claimed from consumers idle past the claim threshold.", labels...),
		errors:        counter("errors_total", "Operational errors: failed reads, commits of unknown outcome, dead letters that could not be written.", labels...),
		commit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "commit_duration_seconds", ConstLabels: opts.ConstLabels, Buckets: commitBuckets,
			Help: "Round trip of successful commits (one script per batch of entries).",
		}, labels),
		handler: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "handler_duration_seconds", ConstLabels: opts.ConstLabels, Buckets: handlerBuckets,
			Help: "Duration of handler calls, failed and panicking ones included.",
		}, []string{"stream", "group"}),
		assigned: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "partition_assigned", ConstLabels: opts.ConstLabels,
			Help: "1 while the consumer owns the topic partition (more while several of its running instances do); the series goes when it stops owning it.",
		}, []string{"topic", "group", "consumer", "partition"}),
		assignments: counter("partition_assignments_total", "Topic partitions a consumer acquired.", topicLabels...),
		revocations: counter("partition_revocations_total", "Topic partitions a consumer stopped consuming, by reason: handover (released to another member), lease_lost (lost without handing it over), other.",
			slices.Concat(topicLabels, []string{"reason"})...),
	}
}

func (m *Metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		m.committed, m.conflicts, m.fenced, m.retries, m.deadLetters, m.claims, m.errors, m.commit, m.handler,
		m.assigned, m.assignments, m.revocations,
	}
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

// Observe implements streamtx.Observer. Entries are counted for commits,
// fenced entries, retries, dead letters and claims; conflicts and errors are
// counted once per event. The events of a topic's partition (Partition >= 0)
// are counted under the topic's name as label stream, all partitions
// together. EventAssigned and EventRevoked set and remove
// streamtx_partition_assigned and are counted in
// streamtx_partition_assignments_total and
// streamtx_partition_revocations_total. Events of unknown kinds are ignored.
func (m *Metrics) Observe(e streamtx.Event) {
	switch e.Kind {
	case streamtx.EventAssigned, streamtx.EventRevoked:
		m.observePartition(e)
		return
	}
	stream := e.Stream
	if e.Partition >= 0 {
		stream = topicOf(stream)
	}
	lv := []string{labelValue(stream), labelValue(e.Group)}
	if m.consumerLabel {
		lv = append(lv, labelValue(e.Consumer))
	}
	entries := float64(len(e.IDs))
	switch e.Kind {
	case streamtx.EventCommit:
		m.committed.WithLabelValues(lv...).Add(entries)
		m.commit.WithLabelValues(lv...).Observe(e.Duration.Seconds())
	case streamtx.EventConflict:
		m.conflicts.WithLabelValues(lv...).Inc()
	case streamtx.EventFenced:
		m.fenced.WithLabelValues(lv...).Add(max(entries, 1))
	case streamtx.EventRetry:
		m.retries.WithLabelValues(lv...).Add(max(entries, 1))
	case streamtx.EventDeadLetter:
		m.deadLetters.WithLabelValues(lv...).Add(max(entries, 1))
	case streamtx.EventClaim:
		m.claims.WithLabelValues(lv...).Add(entries)
	case streamtx.EventError:
		m.errors.WithLabelValues(lv...).Inc()
	}
}

// observePartition follows EventAssigned and EventRevoked. One without a
// partition (Partition < 0) says nothing about one, and is ignored.
func (m *Metrics) observePartition(e streamtx.Event) {
	if e.Partition < 0 {
		return
	}
	o := owner{
		topic: labelValue(topicOf(e.Stream)), group: labelValue(e.Group),
		consumer: labelValue(e.Consumer), partition: strconv.Itoa(e.Partition),
	}
	lv := []string{o.topic, o.group}
	if m.consumerLabel {
		lv = append(lv, o.consumer)
	}
	if e.Kind == streamtx.EventAssigned {
		m.assignments.WithLabelValues(lv...).Inc()
	} else {
		m.revocations.WithLabelValues(append(lv, revocationReason(e.Err))...).Inc()
	}

	// Counted per consumer name: two instances of one name may own a
	// partition at once for a moment (one lost its lease and has not
	// noticed yet), and the first to let go must not remove the series.
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.owners[o]
	if e.Kind == streamtx.EventAssigned {
		n++
	} else {
		n--
	}
	if n <= 0 {
		delete(m.owners, o)
		m.assigned.DeleteLabelValues(o.topic, o.group, o.consumer, o.partition)
		return
	}
	m.owners[o] = n
	m.assigned.WithLabelValues(o.topic, o.group, o.consumer, o.partition).Set(float64(n))
}

// revocationReason is the label reason of an EventRevoked with err.
func revocationReason(err error) string {
	switch {
	case err == nil:
		return "handover"
	case errors.Is(err, streamtx.ErrLeaseLost):
		return "lease_lost"
	}
	return "other"
}

// topicOf returns the topic of a partition stream: its name before the hash
// tag ("orders" for "orders:{orders.p3}", see streamtx.Topic's Names; a
// topic's name holds no brace). A stream of another form is returned as it
// is.
func topicOf(stream string) string {
	if i := strings.Index(stream, ":{"); i >= 0 {
		return stream[:i]
	}
	return stream
}

// InstrumentHandler returns h timed into streamtx_handler_duration_seconds
// with the labels stream and group: every call, whether it returns nil, an
// error or panics (the panic goes on to the consumer). The handler it returns
// unwraps to h, so a Stateful or Keyed h stays visible to the consumer.
func (m *Metrics) InstrumentHandler(h streamtx.Handler, stream, group string) streamtx.Handler {
	return &timedHandler{h: h, obs: m.handler.WithLabelValues(labelValue(stream), labelValue(group))}
}

type timedHandler struct {
	h   streamtx.Handler
	obs prometheus.Observer
}

func (t *timedHandler) Handle(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
	start := time.Now()
	defer func() { t.obs.Observe(time.Since(start).Seconds()) }()
	return t.h.Handle(ctx, msg, tx)
}

// Unwrap returns the instrumented handler.
func (t *timedHandler) Unwrap() streamtx.Handler { return t.h }

// Middleware returns InstrumentHandler as a streamtx.Middleware.
func (m *Metrics) Middleware(stream, group string) streamtx.Middleware {
	return func(h streamtx.Handler) streamtx.Handler { return m.InstrumentHandler(h, stream, group) }
}

// labelValue makes s a valid label value: Redis names are bytes, Prometheus
// label values UTF-8 (an invalid one would make the client panic).
func labelValue(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }
