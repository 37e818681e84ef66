package streamtx

// A consumer of a topic: membership, partition leases, and a partition
// consumer per owned partition.
//
// Every Run is an instance with an ID of its own ("<consumer>/<random>"). It
// heartbeats into the group's membership (lua/members.lua) every
// Config.Heartbeat, renews the leases it holds (lua/lease.lua), and computes
// the sticky balanced assignment of the partitions over the live members
// (internal/sticky) from the leases as they are in Redis. It releases what
// the assignment moves away — after the partition consumer has stopped,
// finishing or leaving pending what it holds — and acquires what the
// assignment gives it once the lease is free or expired. Each acquisition
// raises the partition's epoch; every script a partition consumer runs
// checks that epoch (rdb.FencePrologue), so an instance that lost its lease
// while paused writes nothing when it resumes.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/sticky"
)

// partitionConsumerName is the consumer name every owner of a partition
// reads under, in the partition stream's group: a new owner finds what the
// last one left pending as its own pending entries, and takes them back
// first, in stream order.
const partitionConsumerName = "stx-owner"

// member is one Run of a consumer of a topic.
type member struct {
	c          *Consumer
	topic      *Topic
	id         string // instance ID
	log        *slog.Logger
	scripts    *rdb.Scripts
	fenced     *rdb.Scripts
	leaseKeys  []string
	membersKey string

	mu    sync.Mutex
	parts map[int]*owned // partitions with a running partition consumer

	// soon, when positive, is how long until the next tick should run
	// rather than a whole Heartbeat later: a lease another instance holds
	// expires before then, or a partition assigned to this one is still
	// being handed over. Set by tick, read by run (one goroutine).
	soon time.Duration

	exited chan *owned
}

// owned is a partition this instance holds, with its partition consumer.
type owned struct {
	p         int
	epoch     string
	child     *Consumer
	cancel    context.CancelFunc
	err       error // what the partition consumer's Run returned
	releasing bool  // handed over: stopping, then released
	lost      error // the lease is gone (nil while held)
}

// runTopic is Run for a consumer of a topic.
func (c *Consumer) runTopic(ctx context.Context) error {
	t, err := c.openTopic(ctx)
	if err != nil || t == nil {
		return err
	}
	scripts, err := luaScripts()
	if err != nil {
		return err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	m := &member{
		c: c, topic: t, id: c.cfg.Consumer + "/" + hex.EncodeToString(b[:]),
		scripts: scripts, fenced: scripts.Fenced(),
		membersKey: keys.Members(c.cfg.Topic, c.cfg.Group),
		parts:      make(map[int]*owned),
		exited:     make(chan *owned, t.Partitions()),
	}
	for p := range t.Partitions() {
		space, err := keys.NewSpace(t.Stream(p), c.cfg.Group)
		if err != nil {
			return configErr("Topic", "%v", err)
		}
		m.leaseKeys = append(m.leaseKeys, space.Lease())
	}
	c.members.Store(m)
	m.log = c.log.With("instance", m.id)
	return m.run(ctx)
}

// openTopic opens the topic, retrying while Redis fails. A topic that does
// not exist is an error: CreateTopic fixes its partition count.
func (c *Consumer) openTopic(ctx context.Context) (*Topic, error) {
	for attempt := int64(1); ; attempt++ {
		t, err := OpenTopic(ctx, c.rdb, c.cfg.Topic)
		switch {
		case err == nil:
			return t, nil
		case errors.Is(err, ErrTopicNotFound), errors.Is(err, ErrWrongType), errors.Is(err, ErrConfig):
			return nil, err
		case ctx.Err() != nil:
			return nil, nil
		}
		c.fault(err, nil, attempt)
		c.sleep(ctx, backoff(attempt, 100*time.Millisecond, 5*time.Second))
	}
}

func (m *member) run(ctx context.Context) error {
	c := m.c
	// The next tick: a Heartbeat after the last one, or sooner when a lease
	// of another instance expires before then or a hand-over is pending
	// (see tick).
	next := time.NewTimer(c.cfg.Heartbeat)
	defer next.Stop()
	defer m.leave()
	fails := int64(0)
	var fatal error
	done := ctx.Done()
	for fatal == nil {
		m.soon = 0
		if err := m.tick(ctx, ctx.Err() != nil); err != nil {
			fails++
			c.fault(err, nil, fails)
		} else {
			fails = 0
			c.healthy()
			c.readyOnce.Do(func() { close(c.ready) })
		}
		if ctx.Err() != nil && m.count() == 0 {
			return nil
		}
		d := c.cfg.Heartbeat
		if m.soon > 0 && m.soon < d {
			d = m.soon
		}
		next.Reset(d)
		select {
		case <-done:
			m.stopAll()
			done = nil
		case <-next.C:
		case o := <-m.exited:
			fatal = m.exit(ctx, o)
		}
	}
	// A partition consumer failed for good: stop the others, then return.
	m.stopAll()
	next.Reset(c.cfg.Heartbeat)
	for m.count() > 0 {
		select {
		case o := <-m.exited:
			m.exit(ctx, o)
		case <-next.C:
			_ = m.tick(ctx, true)
			next.Reset(c.cfg.Heartbeat)
		}
	}
	return fatal
}

// expirySlack is how long after a lease's expiry (by Redis's clock) a tick
// scheduled for it runs, so that it finds the lease expired.
const expirySlack = 5 * time.Millisecond

// soonAfter notes that the next tick should come within d.
func (m *member) soonAfter(d time.Duration) {
	d = max(d, time.Millisecond)
	if m.soon <= 0 || d < m.soon {
		m.soon = d
	}
}

// health returns the first partition consumer's failure, if any.
func (m *member) health() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for p, o := range m.parts {
		if u := o.child.health.Load(); u != nil {
			return fmt.Errorf("streamtx: partition %d unhealthy since %s: %w", p, u.since.Format(time.RFC3339), u.err)
		}
	}
	return nil
}

func (m *member) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.parts)
}

// stopAll stops every partition consumer (they finish what they hold).
func (m *member) stopAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.parts {
		o.releasing = true
		o.cancel()
	}
}

// exit deals with a partition consumer that returned: its lease is released
// (unless lost), and an error it returned is Run's.
func (m *member) exit(ctx context.Context, o *owned) error {
	m.mu.Lock()
	delete(m.parts, o.p)
	lost := o.lost
	m.mu.Unlock()
	if lost == nil {
		ok, err := m.lease(ctx, "release", o.p, o.epoch)
		if err != nil {
			m.log.Warn("streamtx: cannot release a partition's lease; it expires", "partition", o.p, "err", err, "ttl", m.c.cfg.LeaseTTL)
		} else if !ok {
			lost = ErrLeaseLost
		}
	}
	m.c.report(Event{Kind: EventRevoked, Stream: m.topic.Stream(o.p), Partition: o.p, Err: lost})
	m.log.Info("streamtx: partition revoked", "partition", o.p, "epoch", o.epoch, "lost", lost)
	if o.err != nil && ctx.Err() == nil {
		return fmt.Errorf("streamtx: partition %d (%q): %w", o.p, m.topic.Stream(o.p), o.err)
	}
	return nil
}

// tick heartbeats, renews the leases held, and moves partitions towards
// the assignment (only renewing when stopping).
func (m *member) tick(ctx context.Context, stopping bool) error {
	c := m.c
	rctx := context.WithoutCancel(ctx)
	op := "beat"
	if stopping {
		op = "leave"
	}
	reply, err := rdb.Run(rctx, c.rdb, m.scripts.Members, []string{m.membersKey}, op, m.id, c.cfg.LeaseTTL.Milliseconds())
	if err != nil {
		return fmt.Errorf("streamtx: heartbeat of %q: %w", m.membersKey, err)
	}
	now, members, err := parseMembers(reply)
	if err != nil {
		return err
	}
	owners, expiry, err := m.readLeases(rctx, now)
	if err != nil {
		return err
	}
	// A lease that another instance does not renew in time (it died, or is
	// paused) is taken over right after it expires, not up to a Heartbeat
	// later. A live instance renews its leases a Heartbeat apart, more than
	// LeaseTTL/2 before they expire: this only fires for one that did not.
	if expiry > 0 {
		m.soonAfter(time.Duration(expiry-now)*time.Millisecond + expirySlack)
	}
	// Renew what is held; what is no longer ours is lost.
	m.mu.Lock()
	held := make([]*owned, 0, len(m.parts))
	for _, o := range m.parts {
		if o.lost == nil {
			held = append(held, o)
		}
	}
	m.mu.Unlock()
	for _, o := range held {
		ok, err := m.lease(rctx, "renew", o.p, o.epoch)
		if err != nil {
			return err
		}
		if !ok {
			m.lose(o)
		}
	}
	if stopping {
		return nil
	}
	current := make(sticky.Assignment, len(owners))
	copy(current, owners)
	target := sticky.Assign(len(owners), members, current)
	plan := sticky.Plan(m.id, members, current, target)
	m.mu.Lock()
	for _, p := range plan.Release {
		if o := m.parts[p]; o != nil && !o.releasing {
			o.releasing = true
			o.cancel()
			m.log.Info("streamtx: handing a partition over", "partition", p, "to", target[p])
		}
	}
	m.mu.Unlock()
	if len(plan.Wait) > 0 {
		// Another member hands partitions over at its next tick: look
		// again well before ours.
		m.soonAfter(max(c.cfg.Heartbeat/10, 10*time.Millisecond))
	}
	acquire := plan.Acquire
	for p, owner := range current {
		// A lease this instance holds with no consumer running: an
		// acquisition whose reply was lost. Acquire it again (a new epoch)
		// rather than leave the partition idle until the lease expires.
		m.mu.Lock()
		idle := owner == m.id && target[p] == m.id && m.parts[p] == nil
		m.mu.Unlock()
		if idle {
			acquire = append(acquire, p)
		}
	}
	for _, p := range acquire {
		if ctx.Err() != nil {
			break
		}
		m.mu.Lock()
		busy := m.parts[p] != nil
		m.mu.Unlock()
		if busy {
			continue // still stopping after a hand-over: acquired again once it has
		}
		if err := m.acquire(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// lose stops a partition consumer whose lease is gone.
func (m *member) lose(o *owned) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o.lost == nil {
		o.lost = ErrLeaseLost
		o.cancel()
		m.log.Warn("streamtx: partition lease lost (paused or cut off past LeaseTTL); stopping its consumer", "partition", o.p, "epoch", o.epoch)
	}
}

// readLeases returns the live owner of each partition ("" when free), and
// the earliest expiry (ms, Redis's clock) of a live lease held by another
// instance, 0 when there is none.
func (m *member) readLeases(ctx context.Context, now int64) (owners []string, expiry int64, err error) {
	pipe := m.c.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(m.leaseKeys))
	for p, k := range m.leaseKeys {
		cmds[p] = pipe.HMGet(ctx, k, "owner", "until")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, 0, fmt.Errorf("streamtx: read leases: %w", err)
	}
	owners = make([]string, len(cmds))
	for p, cmd := range cmds {
		v := cmd.Val()
		if len(v) != 2 {
			continue
		}
		owner, _ := v[0].(string)
		s, _ := v[1].(string)
		until, _ := strconv.ParseInt(s, 10, 64)
		if owner != "" && until > now {
			owners[p] = owner
			if owner != m.id && (expiry == 0 || until < expiry) {
				expiry = until
			}
		}
	}
	return owners, expiry, nil
}

// acquire takes partition p's lease if it is free and starts its consumer.
func (m *member) acquire(ctx context.Context, p int) error {
	c := m.c
	reply, err := rdb.Run(context.WithoutCancel(ctx), c.rdb, m.scripts.Lease, []string{m.leaseKeys[p]}, "acquire", m.id, "", c.cfg.LeaseTTL.Milliseconds())
	if err != nil {
		return fmt.Errorf("streamtx: acquire partition %d: %w", p, err)
	}
	a, ok := reply.([]any)
	if !ok || len(a) < 2 {
		return fmt.Errorf("streamtx: acquire partition %d: unexpected reply %v", p, reply)
	}
	if got, _ := a[0].(int64); got != 1 {
		return nil // another live owner: next time
	}
	epoch, _ := a[1].(string)
	child, err := m.partitionConsumer(ctx, p, epoch)
	if err != nil {
		// Acquired, but cannot start: let the lease go.
		if _, rerr := m.lease(ctx, "release", p, epoch); rerr != nil {
			m.log.Warn("streamtx: cannot release a partition's lease; it expires", "partition", p, "err", rerr)
		}
		return err
	}
	cctx, cancel := context.WithCancel(ctx)
	o := &owned{p: p, epoch: epoch, child: child, cancel: cancel}
	child.lost = func() { m.lose(o) }
	m.mu.Lock()
	m.parts[p] = o
	m.mu.Unlock()
	e, _ := strconv.ParseInt(epoch, 10, 64)
	c.report(Event{Kind: EventAssigned, Stream: m.topic.Stream(p), Partition: p, Epoch: e})
	m.log.Info("streamtx: partition assigned", "partition", p, "epoch", epoch)
	go func() {
		o.err = child.Run(cctx)
		cancel()
		m.exited <- o
	}()
	return nil
}

// lease runs lease.lua's op on partition p under epoch.
func (m *member) lease(ctx context.Context, op string, p int, epoch string) (bool, error) {
	reply, err := rdb.Run(context.WithoutCancel(ctx), m.c.rdb, m.scripts.Lease, []string{m.leaseKeys[p]}, op, m.id, epoch, m.c.cfg.LeaseTTL.Milliseconds())
	if err != nil {
		return false, fmt.Errorf("streamtx: %s lease of partition %d: %w", op, p, err)
	}
	n, _ := reply.(int64)
	return n == 1, nil
}

// leave removes this instance from the membership, so the others take its
// partitions at once instead of after LeaseTTL.
func (m *member) leave() {
	c := m.c
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Heartbeat)
	defer cancel()
	if _, err := rdb.Run(ctx, c.rdb, m.scripts.Members, []string{m.membersKey}, "leave", m.id, 0); err != nil {
		m.log.Warn("streamtx: cannot leave the membership; the heartbeat expires", "err", err)
	}
}

// partitionConsumer returns the consumer of partition p under lease epoch.
func (m *member) partitionConsumer(ctx context.Context, p int, epoch string) (*Consumer, error) {
	c := m.c
	cfg := c.cfg
	cfg.Topic = ""
	cfg.Stream = m.topic.Stream(p)
	cfg.Consumer = partitionConsumerName
	cfg.Logger = m.log.With("partition", p, "epoch", epoch)
	child, err := NewConsumer(c.rdb, cfg, c.orig)
	if err != nil {
		return nil, err
	}
	child.meta = c.meta
	child.name = c.cfg.Consumer
	child.partition = p
	child.topic = c.cfg.Topic
	child.ordered = true
	child.scripts = m.fenced
	child.fence = &rdb.Fence{Key: m.leaseKeys[p], Owner: m.id, Epoch: epoch}
	child.record.Key = child.space.Commits()
	if err := child.loadRecord(ctx); err != nil {
		return nil, err
	}
	return child, nil
}

func parseMembers(v any) (now int64, members []string, err error) {
	a, ok := v.([]any)
	if !ok || len(a) < 1 {
		return 0, nil, fmt.Errorf("streamtx: unexpected membership reply %T", v)
	}
	s, _ := a[0].(string)
	if now, err = strconv.ParseInt(s, 10, 64); err != nil {
		return 0, nil, fmt.Errorf("streamtx: unexpected membership time %v", a[0])
	}
	for _, x := range a[1:] {
		if id, ok := x.(string); ok {
			members = append(members, id)
		}
	}
	return now, members, nil
}

// isFenced reports whether err is a fenced script's refusal: the lease is
// held by another instance or epoch.
func isFenced(err error) bool {
	return err != nil && redis.HasErrorPrefix(err, rdb.FencedPrefix)
}
