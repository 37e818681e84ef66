// Package console is a web console for streams consumed with streamtx: an
// http.Handler that a service mounts on its admin port, and what
// `streamtx console` serves.
//
//	c, err := console.New(rdb, console.Options{RootPath: "/streamtx", ReadOnly: true})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	adminMux.Handle("/streamtx/", c)
//
// # Pages
//
// Server-rendered HTML that works without JavaScript (a small script only
// selects all rows and pauses the overview's refresh while its tab is hidden):
//
//   - Overview: every stream and consumer group with length, lag, pending
//     entries, oldest pending entry, dead letters and a lag-over-time chart,
//     the groups that need attention first.
//   - Group: consumers, pending entries a page at a time (owner, idle time,
//     deliveries), the safe trim point and what holds it back.
//   - Dead letters: a page at a time, filtered by error text; one dead letter
//     with its fields and, when it is an Envelope, its decoded attributes and
//     data; replay (selected or all) and purge, each behind a confirmation
//     page and a POST.
//   - State: a state record as JSON, with version and last entry ID.
//   - Topic: per consumer group, each partition's stream (linking to its
//     group page), lease owner, epoch and time left, lag and pending; and
//     the group's members. The overview lists each topic's groups with
//     their lag and pending summed over the partitions and how many
//     partitions are owned (under a live lease). Topics are read-only.
//
// # Which streams
//
// Options.Streams and Options.Topics name them; when both are empty, the
// console finds every key of type stream (SCAN … TYPE stream, on every
// master of a cluster) matching Options.Match, and every topic whose name
// matches it (SCAN MATCH stx:{<Match>}:topic TYPE string: the topics'
// metadata records), every Options.DiscoverInterval. Keys under "stx:" are
// streamtx's own (dead letters, outboxes) and are not listed as streams: a
// group's dead letters are shown with the group. A topic's partition
// streams are shown with the topic, not as streams of their own.
//
// # Load on Redis
//
// One goroutine owned by the Console (started by New, stopped by Close)
// inspects each topic with streamtx.InspectTopic (GET of its metadata
// record, Inspect of each partition, TIME, ZRANGE of each group's members
// and HGETALL of each lease) and each other stream with streamtx.Inspect
// once per Options.Interval, and every page is rendered from that shared
// snapshot, however many viewers there are (the topic page sends nothing);
// it also keeps each group's lag and pending count over the last
// Options.History for the charts. Lists are read live, one page per request:
// pending entries with XPENDING start/count, dead letters with XRANGE count
// (a filtered list reads at most 1,000 dead letters per page). No request
// sends anything else than these, TIME, GET of a state record, and the
// replay and purge of streamtx.ReplayDeadLetters and PurgeDeadLetters (the
// same calls as `streamtx dlq replay|purge`); names and IDs from a request
// are checked first: a stream must be one the console lists and a group one
// of its groups, a topic one the console lists.
//
// # Safety
//
// Options.ReadOnly refuses replay and purge. Options.BearerToken and
// Options.Username/Password require credentials on every request. Every POST
// carries a CSRF token (an HMAC, under a key random per Console, of a nonce
// kept in a SameSite=Strict cookie) and is refused without it; a POST from
// another origin is refused too. Every action, and every refused one, is
// logged to Options.Logger with who (the user name, "bearer" or
// "anonymous", and the remote address) and what.
package console

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options configures a Console. The zero value is a read-write console
// without authentication that lists every stream.
type Options struct {
	// RootPath is the path the console is mounted under, such as
	// "/streamtx" (mount it with mux.Handle(RootPath+"/", console)).
	// Default "": the root.
	RootPath string

	// Streams lists the streams to show. Default (when Topics is empty
	// too): every stream key matching Match, found with SCAN.
	Streams []string
	// Topics lists the topics to show. Default (when Streams is empty
	// too): every topic whose name matches Match, found with SCAN; when
	// Streams is set, none.
	Topics []string
	// Match is the SCAN MATCH pattern of the streams and of the topic
	// names to show when Streams and Topics are empty. Default "*".
	Match string
	// DiscoverInterval is how often the keyspace is scanned for streams
	// and topics when Streams and Topics are empty. Default 1m.
	DiscoverInterval time.Duration
	// MaxStreams bounds the streams shown (and inspected), and, apart, the
	// topics. Default 1000.
	MaxStreams int

	// Interval is how often each stream is inspected (and how often the
	// overview refreshes in the browser). Default 5s, at least 1s.
	Interval time.Duration
	// History is how far back the lag charts go. Default 1h.
	History time.Duration
	// PageSize is the default number of rows of pending entries and dead
	// letters per page (a request may ask for up to 500). Default 50.
	PageSize int

	// ReadOnly refuses replay and purge.
	ReadOnly bool
	// BearerToken, when set, is accepted as "Authorization: Bearer TOKEN".
	BearerToken string
	// Username and Password, when set, are accepted as HTTP basic auth.
	// When BearerToken or Username is set, a request with neither is
	// refused (401).
	Username, Password string

	// Logger receives every action (replay, purge) and every refused
	// request, with who and what. Default: discard.
	Logger *slog.Logger
}

// Defaults.
const (
	defaultInterval         = 5 * time.Second
	defaultHistory          = time.Hour
	defaultDiscoverInterval = time.Minute
	defaultMaxStreams       = 1000
	defaultPageSize         = 50

	maxPageSize = 500
	// filterScanLimit bounds the dead letters read by one filtered page.
	filterScanLimit = 1000
)

// ErrOptions is wrapped by New's errors for invalid Options.
var ErrOptions = errors.New("console: invalid options")

// Console serves the web console. It is an http.Handler. Create it with
// New and stop its sampler with Close.
type Console struct {
	rdb     redis.UniversalClient
	opts    Options
	log     *slog.Logger
	mux     *http.ServeMux
	pages   *pages
	csrfKey []byte

	sampler *sampler
	cancel  context.CancelFunc
	done    chan struct{}
	close   sync.Once
}

// New returns a Console reading client, and starts its sampler: a goroutine
// that inspects the streams every Options.Interval until Close.
func New(client redis.UniversalClient, opts Options) (*Console, error) {
	if client == nil {
		return nil, fmt.Errorf("%w: nil client", ErrOptions)
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	p, err := parsePages()
	if err != nil {
		return nil, err
	}
	c := &Console{rdb: client, opts: opts, log: opts.Logger, pages: p, csrfKey: make([]byte, 32)}
	rand.Read(c.csrfKey)
	c.sampler = newSampler(client, opts, c.log)
	c.routes()
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel, c.done = cancel, make(chan struct{})
	go func() {
		defer close(c.done)
		c.sampler.run(ctx)
	}()
	return c, nil
}

// Close stops the sampler and waits for it. The handler keeps serving the
// last snapshot. It is safe to call more than once.
func (c *Console) Close() error {
	c.close.Do(func() {
		c.cancel()
		<-c.done
	})
	return nil
}

func (o *Options) setDefaults() error {
	o.RootPath = strings.TrimRight(o.RootPath, "/")
	if o.RootPath != "" && !strings.HasPrefix(o.RootPath, "/") {
		return fmt.Errorf("%w: RootPath %q must start with /", ErrOptions, o.RootPath)
	}
	for _, s := range o.Streams {
		if !validName(s) {
			return fmt.Errorf("%w: stream name %q", ErrOptions, s)
		}
	}
	for _, s := range o.Topics {
		if !validName(s) || strings.ContainsAny(s, "{}") {
			return fmt.Errorf("%w: topic name %q", ErrOptions, s)
		}
	}
	if o.Match == "" {
		o.Match = "*"
	}
	if o.DiscoverInterval == 0 {
		o.DiscoverInterval = defaultDiscoverInterval
	}
	if o.MaxStreams == 0 {
		o.MaxStreams = defaultMaxStreams
	}
	if o.Interval == 0 {
		o.Interval = defaultInterval
	}
	if o.History == 0 {
		o.History = defaultHistory
	}
	if o.PageSize == 0 {
		o.PageSize = defaultPageSize
	}
	switch {
	case o.Interval < time.Second:
		return fmt.Errorf("%w: Interval %s is below 1s", ErrOptions, o.Interval)
	case o.DiscoverInterval < o.Interval:
		return fmt.Errorf("%w: DiscoverInterval %s is below Interval %s", ErrOptions, o.DiscoverInterval, o.Interval)
	case o.History < o.Interval:
		return fmt.Errorf("%w: History %s is below Interval %s", ErrOptions, o.History, o.Interval)
	case o.MaxStreams < 0:
		return fmt.Errorf("%w: negative MaxStreams", ErrOptions)
	case o.PageSize < 0 || o.PageSize > maxPageSize:
		return fmt.Errorf("%w: PageSize %d not within 1..%d", ErrOptions, o.PageSize, maxPageSize)
	case o.Password != "" && o.Username == "":
		return fmt.Errorf("%w: Password without Username", ErrOptions)
	case o.Username != "" && o.Password == "":
		return fmt.Errorf("%w: Username without Password", ErrOptions)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// validName reports whether s may be a stream, group, state name or key
// taken from a request: not empty, at most 1024 bytes, no control
// characters.
func validName(s string) bool {
	if s == "" || len(s) > 1024 {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
