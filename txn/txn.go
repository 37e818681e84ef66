// Package txn is the transaction a handler works in.
//
// A Tx collects everything a handler does for one entry — state changes and
// publishes — and nothing of it reaches Redis unless the consumer commits it,
// in one script with the entry's acknowledgement. When the handler fails,
// the consumer rolls the Tx back: state is as it was before the handler ran
// and the publishes are discarded.
//
// State is declared once, typed, with NewState, and read through the Tx:
//
//	var totals = txn.NewState[Totals]("totals")
//	var stock = txn.NewState[Stock]("stock")
//
//	func handle(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
//		t, err := totals.Get(ctx, tx) // one value per (stream, group, "totals")
//		if err != nil {
//			return err
//		}
//		s, err := stock.GetKey(ctx, tx, msg.Values["sku"]) // one value per SKU
//		if err != nil {
//			return err
//		}
//		t.Orders++
//		s.Reserved++
//		return tx.Publish("receipts", map[string]any{"order": msg.Values["order_id"]})
//	}
//
// A Tx belongs to one handler call and is not safe for concurrent use.
package txn

import "github.com/streamtx/streamtx/internal/txnengine"

// ErrBadPublish is returned by Publish for a publish that can never commit: an
// empty stream name, no values, a value of an unsupported type, or a target
// the consumer refuses (another Redis Cluster slot). The consumer treats a
// handler whose publish failed as failed with a permanent error.
var ErrBadPublish = txnengine.ErrBadPublish

// ErrStateDecode is returned by State.Get and State.GetKey when a stored
// state record does not decode with the state's codec. The error names the
// key.
var ErrStateDecode = txnengine.ErrStateDecode

// ErrLaneConflict is returned by State.Get and State.GetKey when handlers in
// two parallel lanes (Config.Parallelism) touch one state record in the same
// batch: with lanes, a handler should touch only the state of its own
// partition key. Return it from the handler: the consumer then runs the
// rest of that lane after the others, one entry at a time.
var ErrLaneConflict = txnengine.ErrLaneConflict

// Tx is the transaction of one handler call for one entry. The consumer
// makes it; a handler only uses it.
type Tx txnengine.Tx

func (tx *Tx) engine() *txnengine.Tx { return (*txnengine.Tx)(tx) }

// EntryID returns the ID of the entry being handled.
func (tx *Tx) EntryID() string { return tx.engine().EntryID() }

// IdempotencyKey returns a key that is the same on every delivery of this
// entry to this group and different for every other entry or group. Use it to
// make side effects outside Redis idempotent: those run at least once.
func (tx *Tx) IdempotencyKey() string { return tx.engine().IdempotencyKey() }

// Publish buffers an XADD of values to stream. It is appended only if the
// transaction commits, in the same script as the state and the
// acknowledgement. Values may be strings, []byte, booleans, integers, floats,
// or fmt.Stringer; fields are written in sorted order.
//
// It returns an error wrapping ErrBadPublish when the publish can never
// commit; the error also sticks to the Tx (see Err), so a handler that
// ignores it still fails.
func (tx *Tx) Publish(stream string, values map[string]any) error {
	return tx.engine().Publish(stream, values)
}

// PublishKeyed buffers a publish of values to topic, a partitioned topic
// (see streamtx.CreateTopic), like Publish: to the partition that key goes to
// (streamtx.Topic.PartitionOf), with key in the reserved field "stx.key".
// The first keyed publish of a consumer to a topic reads the topic's
// metadata from Redis; the consumer then remembers it, so later ones make
// no round trip.
//
// It returns an error wrapping ErrBadPublish — and the entry fails
// permanently — for an unknown topic, an empty key, values that hold
// "stx.key", or any reason Publish has (a partition in another cluster slot
// than the entry's stream, without CrossSlotRelay: co-locate the topics, see
// streamtx.TopicConfig.Colocate). When the topic's metadata cannot be read
// (Redis unreachable), the error does not wrap ErrBadPublish and the handler
// call is retried. The error also sticks to the Tx (see Err).
func (tx *Tx) PublishKeyed(topic, key string, values map[string]any) error {
	return tx.engine().PublishKeyed(topic, key, values)
}

// Err returns the first error Publish or PublishKeyed returned, if any: the
// consumer fails the handler call with it even if the handler returned nil.
func (tx *Tx) Err() error { return tx.engine().Err() }
