// Package streamtxtest tests streamtx handlers the way the rest of a
// service is tested: go test, no Redis installed, fast, parallel. (Its
// model is goka's tester: a fake that runs the real processor code.)
//
// # A Tester
//
// New runs a handler in a real streamtx.Consumer — the same read, handle,
// commit and settle code as in production — on an embedded miniredis, or,
// when REDIS_ADDR is set, on that Redis under a key prefix of its own (the
// same test runs unchanged on both; nothing is flushed):
//
//	tt := streamtxtest.New(t, h, streamtxtest.Options{Stream: "orders", Config: streamtx.Config{MaxDeliveries: 3}})
//	tt.Send(map[string]any{"order_id": "o-1", "amount": 20})
//	tt.Drain() // until every entry is committed or dead-lettered
//	got := streamtxtest.State[Totals](tt, "totals")
//	receipts := tt.Published("receipts")
//	dead := tt.DeadLetters()
//
// Nothing runs between Drains: Drain starts the consumer, waits until the
// group has read every entry and has none pending, and stops it. It fails
// the test with the pending entries and the last errors when that takes
// longer than Options.DrainTimeout. A Tester works in parallel tests and
// under -race, and stops and deletes everything it started when the test
// ends.
//
// # Time
//
// The Tester's clock (Now, Advance) is the consumers' Config.Clock. On
// miniredis, Advance moves Redis's clock too: idle times of pending entries
// (ClaimIdle), new entry IDs and TIME (Retention.MaxAge), TTLs. On a real
// Redis, Redis's own clock is real. The consumer's timers are real time:
// the Tester makes them short unless the configuration sets them — Backoff
// 1ms, so retries and dead letters after MaxDeliveries take milliseconds,
// and Block 10ms. ClaimInterval and Retention.Interval stay as configured:
// a consumer scans for idle entries, and trims, when it starts (at each
// Drain) and then every interval.
//
// # Faults
//
// Faults (seeded, random) and Inject (at a chosen entry) inject, after a
// handler call succeeded and before its entry is committed, one of:
// Redeliver (the call fails: the same consumer handles the entry again),
// Crash (the consumer's Redis client stops reaching Redis and its Run is
// stopped; a new consumer under the same name recovers the entry), LostReply
// (the commit applies and its reply is replaced by a timeout), Conflict
// (another writer commits the state records first, with the same values)
// and Claim (another consumer claims the entry) — the last two on streams
// only (see Topics). They are made with a wrapper around the handler and a
// go-redis hook on each consumer's client, so each one runs the engine's own
// recovery. See Fault.
//
// # Replay safety
//
// CheckReplaySafe runs inputs once without faults and then with random
// faults, and fails, with a diff, the seed and how to re-run it, when a run
// with faults leaves other state, other downstream entries or other dead
// letters. It catches the usual mistakes of an exactly-once handler:
// state kept in a closure or a struct field, a write to Redis made outside
// tx, a handler that carries on after tx.Publish failed. It cannot see
// effects outside the test's Redis, which run at least once.
//
// # Topics
//
// With Options.Topic (and Partitions, default 4) instead of Stream, the
// Tester creates a partitioned topic and runs a consumer of it: one
// instance that owns every partition under a lease, with a partition
// consumer each, as in production. Entries go in with SendKeyed, to their
// key's partition:
//
//	tt := streamtxtest.New(t, stock, streamtxtest.Options{Topic: "stock", Partitions: 4})
//	tt.SendKeyed("apple", map[string]any{"n": 3})
//	tt.SendKeyed("pear", map[string]any{"n": 2})
//	tt.Drain() // until every partition is drained
//	got := streamtxtest.KeyedState[Stock](tt, "stock", "apple") // in apple's partition
//
// Send fails on a topic, and SendKeyed on a stream. A Keyed state is read
// with KeyedState, in the key's partition. A Stateful state has one value per
// partition: State fails on a topic; read each with PartitionState.
// DeadLetters returns those of every partition. The IDs SendKeyed returns
// are unique across partitions (Redis's are unique per stream only), so Inject
// takes them as they are.
//
// Leases last Config.LeaseTTL (the Tester's default is 300ms, with a
// Heartbeat of 50ms) in Redis's clock. On miniredis that clock is the
// Tester's, which moves only with Advance: leases do not expire between two
// heartbeats however slow the test machine is. Drain stops the consumer,
// which releases its leases; a crashed one (Crash) cannot, and the Tester
// expires its leases and its membership before its replacement starts, as
// LeaseTTL would, without waiting and without moving the clock.
//
// On a topic, Redeliver, Crash and LostReply are injected; Claim and
// Conflict are not (see Fault): a partition has one reader and one writer,
// the holder of its lease. A Crash stops every partition consumer of the
// instance at once. CheckReplaySafe takes a topic too, with
// ReplayOptions.KeyField naming the field of each input that holds its key.
//
// # Publishing to other topics
//
// A handler that publishes by key to a topic (tx.PublishKeyed) needs the
// topic to exist, as in production, where a publish to a topic nobody
// created dead-letters its entry. Declare the topics it publishes to in
// Options.Topics, with their partition counts, and read what was published
// to one with PublishedKeyed — partition by partition, each oldest first
// (every entry of a key is in the key's partition):
//
//	tt := streamtxtest.New(t, ship, streamtxtest.Options{Stream: "orders", Topics: map[string]int{"shipments": 3}})
//	tt.Send(map[string]any{"customer": "c-1", "order": "o-1"})
//	tt.Drain()
//	got := tt.PublishedKeyed("shipments") // Message.Key "c-1", Message.Partition its partition
//
// On a shared Redis, New creates each topic under the test's prefix (Key),
// and the Tester redirects its consumers' read of a topic's metadata record
// (at the first tx.PublishKeyed to it) to the topic as stored: the handler
// names the topic as it does in production, and what it publishes lands in
// the stored topic's partitions, each key in the partition the topic's
// partitioner gives it. A handler may publish by key to its own source
// topic too (no declaration needed): those entries are consumed, and Drain
// waits for them. A test that opens one of these topics itself, or puts
// entries in it with a Producer on Client, names it with Key.
package streamtxtest
