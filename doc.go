// Package streamtx is a transactional, exactly-once consumer framework on
// Redis Streams.
//
// A Consumer reads a stream through a consumer group and calls a Handler for
// every entry. The handler works inside a transaction (txn.Tx): it may change
// typed state and publish entries to other streams, and none of it reaches
// Redis until streamtx commits — the state records, the publishes, the
// consumer's committed offset and the XACK — in one Lua script. A crash,
// restart, retry, duplicate process or failover never applies an entry's
// effects twice, and a failed handler publishes nothing.
//
// # Handlers and state
//
// A Handler is any type with Handle(ctx, msg, tx). HandlerFunc adapts a
// function. Stateful gives the handler one typed value per (stream, group,
// name); Keyed gives one per entity key taken from the entry.
//
// A handler that needs several state records declares each once with
// txn.NewState and reads it through its transaction: Get for the one value
// of (stream, group, name), GetKey for one value per entity key. The values
// are pointers; change them in place, and every record the handler touched
// commits with the entry, together and once:
//
//	var totals = txn.NewState[Totals]("totals")
//	var stock = txn.NewState[Stock]("stock").WithCodec(state.JSON[Stock]())
//
//	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
//		t, err := totals.Get(ctx, tx)
//		if err != nil {
//			return err
//		}
//		s, err := stock.GetKey(ctx, tx, msg.Values["sku"])
//		if err != nil {
//			return err
//		}
//		t.Orders++
//		s.Left--
//		return nil
//	})
//
// State is encoded with a codec of package state: state.Msgpack by default
// (lengths checked against the input before decoding, never a format that
// can run code), state.JSON when the records should be readable by other
// tools, or your own state.Codec. A type the codec cannot store faithfully
// (an unexported field) is refused: by NewConsumer for Stateful and Keyed,
// by the first Get for a State, as an error naming the field. Records are
// versioned: a commit only succeeds if every record it writes still has the
// version the handler read, so consumers sharing a record never lose an
// update.
//
// # The commit
//
// The commit script first checks, writing nothing: every entry is still
// pending for this consumer with the delivery count it was read with; every
// state record has the version read; every publish target is a stream or
// absent. Only then does it write. A refusal maps to ErrNotOwned (the
// transaction is dropped), ErrVersionConflict (state is reloaded and the
// handlers run again) or ErrWrongType (the entry is dead-lettered). A reply
// lost on the network is retried with the same arguments: if the first
// attempt ran, the retry is refused as not owned.
//
// # Batches
//
// A consumer reads up to Config.BatchSize entries, runs the handler on each in
// its own transaction, and commits all successful ones in one script. A
// failing entry drops only its own effects.
//
// # Failures
//
// A handler error or panic rolls back its transaction; the entry stays
// pending and is retried after Config.Backoff, while other entries flow. After
// Config.MaxDeliveries, or at once for an error wrapped with Permanent, the
// entry moves to the dead-letter stream in one script. Entries idle longer
// than Config.ClaimIdle at another consumer are claimed; the old owner's late
// commit is then refused. A long handler calls KeepAlive to keep its entries.
//
// Only the guilty entry is dead-lettered. An entry delivered more than
// MaxDeliveries times without its handler failing (the processes holding its
// batch died or paused) is handled again alone, and dead-lettered with
// ErrCrashLoop only if the process keeps dying on it alone. A Redis error
// reply (NOPERM, OOM, MISCONF, READONLY, …) is not the entry's fault: the
// consumer retries without counting a delivery, reports the error, and
// Consumer.Health returns it until Redis accepts again.
//
// # The pipeline
//
// Inside Run a batch goes through stages that hand each other values: read
// (new entries, this consumer's own pending ones, due retries, idle ones
// claimed from others, or the batch read ahead) → handle (the handler, in
// lanes with Config.Parallelism) → commit (one script) → settle (acknowledged,
// handled again, retried, or dead-lettered). Files are named after them.
//
// # Partitioned topics
//
// A topic (CreateTopic) is P partition streams and a partitioner: every
// entry of one key goes to one partition (Producer.PublishKeyed,
// Tx.PublishKeyed). A Consumer with Config.Topic joins its group's
// membership and consumes the partitions it is assigned — balanced, sticky,
// handed over cooperatively — each under a lease whose epoch every script
// of the partition checks, so an owner that lost its lease writes nothing
// (order.go, topicrun.go). Within a partition, an entry is applied only
// once every earlier entry of its key is committed or dead-lettered: a
// failing entry holds back the later entries of its key, not the others.
// Stateful on a topic is one value per partition; Keyed(name, nil, fn) keys
// state by the entry's key. See the README's "Partitioned topics".
//
// # Exactly once, and its limits
//
// Effects inside Redis — state, publishes, acknowledgement — happen exactly
// once, as one unit, within one Redis (and, on a cluster, one hash slot).
// Side effects outside Redis (an HTTP call, an email) happen at least once:
// a handler may run more than once for an entry. Use Tx.IdempotencyKey to make
// them idempotent. Durability is Redis's: a commit acknowledged by a server
// that then loses it (no AOF, a failover to a lagging replica) is lost as a
// whole, and the entry is delivered again.
//
// # Lifecycle
//
// Run blocks until its context is cancelled, then stops reading, lets the
// handler in hand finish (up to Config.ShutdownTimeout), commits, and returns
// with no goroutine left. Ready is closed once the group exists; Done when
// the first Run has returned, and Err says why. Events go to
// Config.Observer and logs to Config.Logger. Middleware goes in
// Config.Middleware (or Wrap), so that it does not hide a Stateful or Keyed
// handler from the consumer.
package streamtx
