package console

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/statejson"
	"github.com/streamtx/streamtx/internal/streamid"
)

// Attention levels of an overview row.
const (
	levelOK    = 0
	levelWarn  = 1
	levelAlert = 2
)

// stuckIdle is the idle time past which an oldest pending entry is flagged:
// past the default ClaimIdle (30s) twice, no consumer is working on it.
const stuckIdle = time.Minute

type overviewRow struct {
	Stream, Group   string
	kind            kind
	Length          int64
	Lag             int64
	LagExact        bool
	Pending         int64
	Oldest          *streamtx.PendingEntry
	DeadLetters     int64
	Consumers       int
	Level           int
	Reasons         []string
	Chart           template.HTML
	Err             string
	GroupLink, DLQ  string
	StreamHasGroups bool
}

type overviewPage struct {
	At          time.Time
	Rows        []overviewRow
	Topics      []topicRow
	DiscoverErr string
	Source      string // how streams were found
	Window      time.Duration
	Alerts      int
}

func (c *Console) snapshot(w http.ResponseWriter, r *http.Request) *snapshot {
	ctx, cancel := context.WithTimeout(r.Context(), 2*c.opts.Interval+10*time.Second)
	defer cancel()
	snap, err := c.sampler.wait(ctx)
	if err != nil {
		c.fail(w, http.StatusServiceUnavailable, "no snapshot of the streams yet: %v", err)
		return nil
	}
	return snap
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request) {
	snap := c.snapshot(w, r)
	if snap == nil {
		return
	}
	p := overviewPage{At: snap.At, DiscoverErr: snap.DiscoverErr, Window: c.opts.History}
	if c.opts.configured() {
		p.Source = fmt.Sprintf("%d configured streams, %d configured topics", len(c.opts.Streams), len(c.opts.Topics))
	} else {
		p.Source = fmt.Sprintf("streams and topics matching %q, found with SCAN every %s", c.opts.Match, fmtDuration(c.opts.DiscoverInterval))
	}
	p.Topics = c.topicRows(snap)
	for _, ss := range snap.Streams {
		if ss.kind == kindPartition {
			continue // on its topic's row
		}
		if ss.Info == nil {
			p.Rows = append(p.Rows, overviewRow{Stream: ss.Name, kind: ss.kind, Err: ss.Err, Level: levelAlert,
				Reasons: []string{"inspect failed"}})
			continue
		}
		if len(ss.Info.Groups) == 0 {
			p.Rows = append(p.Rows, overviewRow{Stream: ss.Name, kind: ss.kind, Length: ss.Info.Length})
			continue
		}
		for _, g := range ss.Info.Groups {
			hist := c.sampler.history(ss.Name, g.Name)
			row := overviewRow{
				Stream: ss.Name, Group: g.Name, kind: ss.kind, Length: ss.Info.Length,
				Lag: g.Lag, LagExact: g.LagExact, Pending: g.Pending, Oldest: g.OldestPending,
				DeadLetters: g.DeadLetters, Consumers: len(g.Consumers), StreamHasGroups: true,
				Chart:     chart(hist, snap.At, c.opts.History, 160, 32, false),
				GroupLink: c.link("/group", "stream", ss.Name, "group", g.Name),
				DLQ:       c.link("/dlq", "stream", ss.Name, "group", g.Name),
			}
			row.Level, row.Reasons = attention(g, hist, snap.At)
			p.Rows = append(p.Rows, row)
		}
	}
	sort.SliceStable(p.Rows, func(i, j int) bool {
		a, b := p.Rows[i], p.Rows[j]
		if a.Level != b.Level {
			return a.Level > b.Level
		}
		if (a.Err != "") != (b.Err != "") {
			return a.Err != "" // failed inspections first
		}
		if a.StreamHasGroups != b.StreamHasGroups {
			return a.StreamHasGroups // streams without groups last
		}
		if a.DeadLetters != b.DeadLetters {
			return a.DeadLetters > b.DeadLetters
		}
		if ai, bi := oldestIdle(a.Oldest), oldestIdle(b.Oldest); ai != bi {
			return ai > bi
		}
		if a.Lag != b.Lag {
			return a.Lag > b.Lag
		}
		return cmp.Or(strings.Compare(a.Stream, b.Stream), strings.Compare(a.Group, b.Group)) < 0
	})
	for _, row := range p.Rows {
		if row.Level == levelAlert {
			p.Alerts++
		}
	}
	for _, row := range p.Topics {
		if row.Level == levelAlert {
			p.Alerts++
		}
	}
	c.render(w, http.StatusOK, "overview", layoutData{Title: "Overview", Refresh: int(c.opts.Interval / time.Second), Page: p})
}

func oldestIdle(p *streamtx.PendingEntry) time.Duration {
	if p == nil {
		return -1
	}
	return p.Idle
}

// attention says how urgently a group needs a look, and why.
func attention(g streamtx.GroupInfo, hist []point, now time.Time) (int, []string) {
	level, why := levelOK, []string(nil)
	raise := func(l int, reason string) {
		level = max(level, l)
		why = append(why, reason)
	}
	if g.DeadLetters > 0 {
		raise(levelAlert, fmt.Sprintf("%s dead letters", fmtNum(g.DeadLetters)))
	}
	if o := g.OldestPending; o != nil && o.Idle >= stuckIdle {
		raise(levelAlert, fmt.Sprintf("a pending entry idle %s", fmtDuration(o.Idle)))
	}
	if growing(hist, now) {
		raise(levelAlert, "lag growing")
	}
	if level == levelOK && (g.Lag > 0 || g.Pending > 0) {
		raise(levelWarn, "behind")
	}
	return level, why
}

// growing reports whether the lag grew over the last five minutes of
// samples (at least three of them) without falling back in between.
func growing(hist []point, now time.Time) bool {
	var recent []point
	for _, p := range hist {
		if now.Sub(p.At) <= 5*time.Minute {
			recent = append(recent, p)
		}
	}
	if len(recent) < 3 || recent[len(recent)-1].Lag <= recent[0].Lag {
		return false
	}
	for i := 1; i < len(recent); i++ {
		if recent[i].Lag < recent[i-1].Lag {
			return false
		}
	}
	return true
}

// target is the stream and group a request names, checked against the
// snapshot.
type target struct {
	Stream, Group string
	Info          *streamtx.StreamInfo
	G             *streamtx.GroupInfo
	DLQ           string
	snap          *snapshot
}

// resolve reads and checks the stream and group parameters of r (from the
// query, or the form of a POST): the stream must be one the console lists
// and the group one of its groups.
func (c *Console) resolve(w http.ResponseWriter, r *http.Request) (*target, bool) {
	stream, group := r.FormValue("stream"), r.FormValue("group")
	if !validName(stream) || !validName(group) {
		c.fail(w, http.StatusBadRequest, "stream and group must be names of 1 to 1024 bytes without control characters")
		return nil, false
	}
	snap := c.snapshot(w, r)
	if snap == nil {
		return nil, false
	}
	info, g := snap.group(stream, group)
	if info == nil || g == nil {
		c.fail(w, http.StatusNotFound, "the console lists no group %q of stream %q (as of %s)", group, stream, fmtTime(snap.At))
		return nil, false
	}
	dlq, err := streamtx.DeadLetterStreamFor(stream, group)
	if err != nil {
		c.fail(w, http.StatusBadRequest, "%v", err)
		return nil, false
	}
	return &target{Stream: stream, Group: group, Info: info, G: g, DLQ: dlq, snap: snap}, true
}

// startID reads a "from" parameter: "-" or "" for the start, else an ID.
func startID(r *http.Request) (string, bool) {
	from := r.URL.Query().Get("from")
	if from == "" || from == "-" {
		return "-", true
	}
	return from, streamid.Valid(from)
}

type groupPage struct {
	*target
	At          time.Time
	Chart       template.HTML
	Window      time.Duration
	Pending     []pendingRow
	From, Next  string
	NextLink    string
	FirstLink   string
	PageErr     string
	HeldByThis  bool
	TrimWhy     string
	DLQLink     string
	StateLink   string
	OffsetsOnly []offsetRow // committed offsets of consumers no longer in the group
}

type pendingRow struct {
	ID, Consumer string
	Idle, Age    time.Duration
	Deliveries   int64
}

type offsetRow struct{ Consumer, ID string }

func (c *Console) group(w http.ResponseWriter, r *http.Request) {
	t, ok := c.resolve(w, r)
	if !ok {
		return
	}
	from, ok := startID(r)
	if !ok {
		c.fail(w, http.StatusBadRequest, "from: not a stream ID")
		return
	}
	n := c.pageSize(r)
	p := groupPage{target: t, At: t.snap.At, Window: c.opts.History, From: from,
		Chart:     chart(c.sampler.history(t.Stream, t.Group), t.snap.At, c.opts.History, 640, 120, true),
		DLQLink:   c.link("/dlq", "stream", t.Stream, "group", t.Group),
		StateLink: c.link("/state", "stream", t.Stream, "group", t.Group),
		FirstLink: c.link("/group", "stream", t.Stream, "group", t.Group),
	}
	// One page of the pending entries list, and the server's clock for
	// their ages.
	pipe := c.rdb.Pipeline()
	tm := pipe.Time(r.Context())
	xp := pipe.XPendingExt(r.Context(), &redis.XPendingExtArgs{
		Stream: t.Stream, Group: t.Group, Start: from, End: "+", Count: n + 1,
	})
	_, _ = pipe.Exec(r.Context())
	if err := cmp.Or(tm.Err(), xp.Err()); err != nil {
		p.PageErr = err.Error()
	} else {
		entries := xp.Val()
		if int64(len(entries)) > n {
			p.Next, entries = entries[n].ID, entries[:n]
			p.NextLink = c.link("/group", "stream", t.Stream, "group", t.Group, "from", p.Next, "n", r.URL.Query().Get("n"))
		}
		for _, e := range entries {
			p.Pending = append(p.Pending, pendingRow{ID: e.ID, Consumer: e.Consumer, Idle: e.Idle,
				Deliveries: e.RetryCount, Age: idAge(e.ID, tm.Val())})
		}
	}
	in := map[string]bool{}
	for _, cn := range t.G.Consumers {
		in[cn.Name] = true
	}
	for name, id := range t.G.Offsets {
		if !in[name] {
			p.OffsetsOnly = append(p.OffsetsOnly, offsetRow{name, id})
		}
	}
	slices.SortFunc(p.OffsetsOnly, func(a, b offsetRow) int { return strings.Compare(a.Consumer, b.Consumer) })
	p.HeldByThis = t.Info.SafeTrimHeldBy == t.Group
	if t.G.TrimPointPending {
		o := t.G.OldestPending
		p.TrimWhy = fmt.Sprintf("its oldest pending entry %s, held by consumer %s, idle %s, delivered %d times",
			o.ID, o.Consumer, fmtDuration(o.Idle), o.Deliveries)
	} else {
		p.TrimWhy = fmt.Sprintf("the entry after its last-delivered ID %s: it has not read further (lag %s)",
			t.G.LastDeliveredID, fmtNum(t.G.Lag))
	}
	crumbs := []crumb{{t.Stream + " / " + t.Group, ""}}
	if ss := t.snap.stream(t.Stream); ss != nil && ss.kind == kindPartition {
		crumbs = append([]crumb{{"topic " + ss.Topic, c.link("/topic", "name", ss.Topic)}}, crumbs...)
	}
	c.render(w, http.StatusOK, "group", layoutData{Title: t.Group + " on " + t.Stream, Page: p, Crumbs: crumbs})
}

// idAge is now minus the millisecond part of id; 0 if in the future.
func idAge(id string, now time.Time) time.Duration {
	ms, _, ok := streamid.Parse(id)
	if !ok || ms > uint64(now.UnixMilli()) {
		return 0
	}
	return now.Sub(time.UnixMilli(int64(ms)))
}

type dlqPage struct {
	*target
	Rows        []streamtx.DeadLetter
	Query       string
	From, Next  string
	NextLink    string
	FirstLink   string
	Scanned     int
	ScanLimited bool
	PageErr     string
	Done        string
	GroupLink   string
	ShowLink    func(id string) string
	ConfirmPath string
	PageSize    int64
}

// deadLetterPage reads one page of dlq from start: up to n dead letters
// whose error contains q (all when q is ""), reading at most
// filterScanLimit dead letters when filtering. next is where the following
// page starts ("" at the end).
func deadLetterPage(ctx context.Context, rdb redis.UniversalClient, dlq, start, q string, n int64) (rows []streamtx.DeadLetter, next string, scanned int, err error) {
	if q == "" {
		rows, next, err = streamtx.ListDeadLetters(ctx, rdb, dlq, start, n)
		return rows, next, len(rows), err
	}
	lq := strings.ToLower(q)
	next = start
	for next != "" && int64(len(rows)) < n && scanned < filterScanLimit {
		var page []streamtx.DeadLetter
		page, next, err = streamtx.ListDeadLetters(ctx, rdb, dlq, next, int64(min(200, filterScanLimit-scanned)))
		if err != nil {
			return nil, "", scanned, err
		}
		for i, d := range page {
			scanned++
			if strings.Contains(strings.ToLower(d.Error), lq) {
				rows = append(rows, d)
				if int64(len(rows)) == n {
					if i+1 < len(page) {
						next = page[i+1].ID
					}
					return rows, next, scanned, nil
				}
			}
		}
	}
	return rows, next, scanned, nil
}

func (c *Console) deadLetters(w http.ResponseWriter, r *http.Request) {
	t, ok := c.resolve(w, r)
	if !ok {
		return
	}
	from, ok := startID(r)
	if !ok {
		c.fail(w, http.StatusBadRequest, "from: not a stream ID")
		return
	}
	q := r.URL.Query().Get("q")
	if len(q) > 200 {
		c.fail(w, http.StatusBadRequest, "q: at most 200 bytes")
		return
	}
	n := c.pageSize(r)
	p := dlqPage{target: t, Query: q, From: from, PageSize: n, ConfirmPath: c.opts.RootPath + "/dlq/confirm",
		GroupLink: c.link("/group", "stream", t.Stream, "group", t.Group),
		FirstLink: c.link("/dlq", "stream", t.Stream, "group", t.Group, "q", q),
		Done:      doneMessage(r),
	}
	p.ShowLink = func(id string) string { return c.link("/dlq/show", "stream", t.Stream, "group", t.Group, "id", id) }
	rows, next, scanned, err := deadLetterPage(r.Context(), c.rdb, t.DLQ, from, q, n)
	if err != nil {
		p.PageErr = err.Error()
	}
	p.Rows, p.Next, p.Scanned = rows, next, scanned
	p.ScanLimited = q != "" && scanned >= filterScanLimit && next != ""
	if next != "" {
		p.NextLink = c.link("/dlq", "stream", t.Stream, "group", t.Group, "q", q, "from", next, "n", r.URL.Query().Get("n"))
	}
	c.render(w, http.StatusOK, "dlq", layoutData{Title: "Dead letters of " + t.Group + " on " + t.Stream, Page: p,
		Crumbs: []crumb{{t.Stream + " / " + t.Group, p.GroupLink}, {"dead letters", ""}}})
}

// doneMessage is the result of an action, from the redirect after it.
func doneMessage(r *http.Request) string {
	q := r.URL.Query()
	num := func(k string) int64 { n, _ := strconv.ParseInt(q.Get(k), 10, 64); return n }
	switch q.Get("done") {
	case "replay":
		s := fmt.Sprintf("Replayed %s dead letters into the stream.", fmtNum(num("count")))
		if m := num("missing"); m > 0 {
			s += fmt.Sprintf(" %s were not found (replayed or purged already).", fmtNum(m))
		}
		return s
	case "purge":
		return fmt.Sprintf("Purged %s dead letters.", fmtNum(num("count")))
	}
	return ""
}

type dlqShowPage struct {
	*target
	D          streamtx.DeadLetter
	Fields     [][2]string
	Envelope   *envelopeView
	GroupLink  string
	ListLink   string
	ReplayLink string
	PurgeLink  string
}

type envelopeView struct {
	ID, Type, Source, Subject, CorrelationID, ContentType string
	SchemaVersion                                         int
	Time                                                  time.Time
	Data                                                  string // indented JSON
	Err                                                   string
}

func (c *Console) deadLetter(w http.ResponseWriter, r *http.Request) {
	t, ok := c.resolve(w, r)
	if !ok {
		return
	}
	id := r.URL.Query().Get("id")
	if !streamid.Valid(id) {
		c.fail(w, http.StatusBadRequest, "id: not a stream ID")
		return
	}
	page, _, err := streamtx.ListDeadLetters(r.Context(), c.rdb, t.DLQ, id, 1)
	if err != nil {
		c.fail(w, http.StatusBadGateway, "%v", err)
		return
	}
	if len(page) == 0 || page[0].ID != id {
		c.fail(w, http.StatusNotFound, "no dead letter %s in %q (replayed or purged?)", id, t.DLQ)
		return
	}
	d := page[0]
	p := dlqShowPage{target: t, D: d,
		GroupLink:  c.link("/group", "stream", t.Stream, "group", t.Group),
		ListLink:   c.link("/dlq", "stream", t.Stream, "group", t.Group),
		ReplayLink: c.link("/dlq/confirm", "stream", t.Stream, "group", t.Group, "action", "replay", "id", id),
		PurgeLink:  c.link("/dlq/confirm", "stream", t.Stream, "group", t.Group, "action", "purge", "id", id),
	}
	for k, v := range d.Values {
		p.Fields = append(p.Fields, [2]string{k, v})
	}
	slices.SortFunc(p.Fields, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	p.Envelope = decodeEnvelope(d)
	c.render(w, http.StatusOK, "dlqshow", layoutData{Title: "Dead letter " + id, Page: p,
		Crumbs: []crumb{{t.Stream + " / " + t.Group, p.GroupLink}, {"dead letters", p.ListLink}, {id, ""}}})
}

// decodeEnvelope decodes a dead letter's fields as a streamtx.Envelope when
// they look like one (id, type, source and data), whatever its schema
// version; the data is shown as JSON (msgpack through statejson).
func decodeEnvelope(d streamtx.DeadLetter) *envelopeView {
	v := d.Values
	if v["id"] == "" || v["type"] == "" || v["source"] == "" || v["data"] == "" {
		return nil
	}
	msg := &streamtx.Message{Stream: d.Stream, ID: d.SourceID, Values: v}
	var opts []streamtx.DecodeOption
	if sv, err := strconv.Atoi(v["schemaversion"]); err == nil {
		opts = append(opts, streamtx.AcceptVersions(sv))
	}
	ev := &envelopeView{}
	var data any
	fill := func(id, typ, source, subject, corr, ct string, sv int, tm time.Time) {
		ev.ID, ev.Type, ev.Source, ev.Subject, ev.CorrelationID = id, typ, source, subject, corr
		ev.ContentType, ev.SchemaVersion, ev.Time = ct, sv, tm
	}
	if ct, _, _ := strings.Cut(v["datacontenttype"], ";"); strings.EqualFold(strings.TrimSpace(ct), streamtx.ContentTypeJSON) {
		e, err := streamtx.Decode[json.RawMessage](msg, opts...)
		if err != nil {
			ev.Err = err.Error()
			return ev
		}
		fill(e.ID, e.Type, e.Source, e.Subject, e.CorrelationID, e.DataContentType, e.SchemaVersion, e.Time)
		data = e.Data
	} else {
		e, err := streamtx.Decode[msgpack.RawMessage](msg, opts...)
		if err != nil {
			ev.Err = err.Error()
			return ev
		}
		fill(e.ID, e.Type, e.Source, e.Subject, e.CorrelationID, e.DataContentType, e.SchemaVersion, e.Time)
		if data, err = statejson.Decode(e.Data); err != nil {
			ev.Err = err.Error()
			return ev
		}
	}
	if b, err := json.MarshalIndent(data, "", "  "); err == nil {
		ev.Data = string(b)
	}
	return ev
}

type confirmPage struct {
	*target
	Action    string // replay or purge
	All       bool
	IDs       []string
	Count     int64 // dead letters concerned
	CSRF      string
	PostPath  string
	Back      string
	ReadOnly  bool
	NoneGiven bool
}

func (c *Console) confirm(w http.ResponseWriter, r *http.Request) {
	t, ok := c.resolve(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	action, all := q.Get("action"), false
	if a, ok := strings.CutSuffix(action, "-all"); ok {
		action, all = a, true
	}
	if action != "replay" && action != "purge" {
		c.fail(w, http.StatusBadRequest, "action: want replay, purge, replay-all or purge-all")
		return
	}
	ids, err := parseIDs(q["id"])
	if err != nil {
		c.fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	p := confirmPage{target: t, Action: action, All: all, ReadOnly: c.opts.ReadOnly,
		PostPath: c.opts.RootPath + "/dlq/" + action,
		Back:     c.link("/dlq", "stream", t.Stream, "group", t.Group),
	}
	if all {
		p.Count = t.G.DeadLetters
	} else {
		p.IDs, p.Count = ids, int64(len(ids))
		p.NoneGiven = len(ids) == 0
	}
	if !c.opts.ReadOnly {
		p.CSRF = c.csrfToken(w, r)
	}
	c.render(w, http.StatusOK, "confirm", layoutData{Title: "Confirm " + action, Page: p,
		Crumbs: []crumb{{t.Stream + " / " + t.Group, c.link("/group", "stream", t.Stream, "group", t.Group)}, {"dead letters", p.Back}, {"confirm " + action, ""}}})
}

// parseIDs checks dead-letter IDs from a request: stream IDs, at most a
// page's worth, without repeats.
func parseIDs(ids []string) ([]string, error) {
	if len(ids) > maxPageSize {
		return nil, fmt.Errorf("at most %d IDs at once", maxPageSize)
	}
	var out []string
	for _, id := range ids {
		if !streamid.Valid(id) {
			return nil, fmt.Errorf("id %q: not a stream ID", truncate(40, id))
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out, nil
}

// action runs a confirmed replay or purge (POST /dlq/replay, /dlq/purge)
// with the same calls as `streamtx dlq replay|purge`, logs it, and
// redirects to the dead letters.
func (c *Console) action(w http.ResponseWriter, r *http.Request) {
	action := strings.TrimPrefix(r.URL.Path, "/dlq/")
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		c.fail(w, http.StatusBadRequest, "bad form: %v", err)
		return
	}
	log := c.log.With("who", who(r), "remote", r.RemoteAddr, "action", action,
		"stream", r.PostForm.Get("stream"), "group", r.PostForm.Get("group"))
	if c.opts.ReadOnly {
		log.Warn("console: action refused: read-only console")
		c.fail(w, http.StatusForbidden, "this console is read-only: %s is not allowed", action)
		return
	}
	if ok, why := c.csrfOK(r); !ok {
		log.Warn("console: action refused", "reason", why)
		c.fail(w, http.StatusForbidden, "%s refused: %s (reload the confirmation page and try again)", action, why)
		return
	}
	t, ok := c.resolve(w, r)
	if !ok {
		log.Warn("console: action refused: unknown stream or group")
		return
	}
	ids, err := parseIDs(r.PostForm["id"])
	all := r.PostForm.Get("all") == "1"
	switch {
	case err != nil:
		log.Warn("console: action refused", "reason", err)
		c.fail(w, http.StatusBadRequest, "%v", err)
		return
	case all == (len(ids) > 0):
		log.Warn("console: action refused: neither IDs nor all, or both")
		c.fail(w, http.StatusBadRequest, "give dead-letter IDs or all, not both")
		return
	}
	what := any(ids)
	if all {
		what = "all"
	}
	log = log.With("dlq", t.DLQ, "ids", what)
	ctx := context.WithoutCancel(r.Context()) // an action runs to its end once started
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var dest string
	switch action {
	case "replay":
		res, err := streamtx.ReplayDeadLetters(ctx, c.rdb, t.DLQ, ids...)
		log.Info("console: replay dead letters", "replayed", len(res.Replayed), "missing", len(res.Missing), "err", err)
		if err != nil {
			c.sampler.refreshStream(ctx, t.Stream)
			c.fail(w, http.StatusBadGateway, "replay stopped after %d dead letters: %v", len(res.Replayed), err)
			return
		}
		dest = c.link("/dlq", "stream", t.Stream, "group", t.Group, "done", "replay",
			"count", strconv.Itoa(len(res.Replayed)), "missing", strconv.Itoa(len(res.Missing)))
	case "purge":
		n, err := streamtx.PurgeDeadLetters(ctx, c.rdb, t.DLQ, ids...)
		log.Info("console: purge dead letters", "purged", n, "err", err)
		if err != nil {
			c.fail(w, http.StatusBadGateway, "purge: %v", err)
			return
		}
		dest = c.link("/dlq", "stream", t.Stream, "group", t.Group, "done", "purge", "count", strconv.FormatInt(n, 10))
	default:
		c.fail(w, http.StatusNotFound, "no action %q", action)
		return
	}
	c.sampler.refreshStream(ctx, t.Stream)
	http.Redirect(w, r, dest, http.StatusSeeOther)
}

type statePage struct {
	*target
	Name, Key string
	Asked     bool
	RecordKey string
	Version   int64
	LastID    string
	JSON      string
	Err       string
	GroupLink string
	FormPath  string
}

func (c *Console) state(w http.ResponseWriter, r *http.Request) {
	t, ok := c.resolve(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	p := statePage{target: t, Name: q.Get("name"), Key: q.Get("key"),
		GroupLink: c.link("/group", "stream", t.Stream, "group", t.Group), FormPath: c.opts.RootPath + "/state"}
	if p.Name != "" {
		p.Asked = true
		if !validName(p.Name) || (p.Key != "" && !validName(p.Key)) {
			c.fail(w, http.StatusBadRequest, "name and key must be 1 to 1024 bytes without control characters")
			return
		}
		var snap streamtx.Snapshot[msgpack.RawMessage]
		var err error
		if p.Key != "" {
			snap, err = streamtx.ReadKeyedState[msgpack.RawMessage](r.Context(), c.rdb, t.Stream, t.Group, p.Name, p.Key)
		} else {
			snap, err = streamtx.ReadState[msgpack.RawMessage](r.Context(), c.rdb, t.Stream, t.Group, p.Name)
		}
		p.RecordKey, p.Version, p.LastID = snap.Key, snap.Version, snap.LastID
		switch {
		case err != nil:
			p.Err = err.Error()
		case snap.Version == 0:
			p.Err = fmt.Sprintf("no state record %q", snap.Key)
		default:
			v, err := statejson.Decode(snap.Value)
			if err != nil {
				p.Err = fmt.Sprintf("state record %q (version %d): %v", snap.Key, snap.Version, err)
				break
			}
			b, err := json.MarshalIndent(v, "", "  ")
			if err != nil {
				p.Err = err.Error()
				break
			}
			p.JSON = string(b)
		}
	}
	c.render(w, http.StatusOK, "state", layoutData{Title: "State of " + t.Group + " on " + t.Stream, Page: p,
		Crumbs: []crumb{{t.Stream + " / " + t.Group, p.GroupLink}, {"state", ""}}})
}
