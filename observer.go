package streamtx

import "time"

// EventKind names what an Event reports.
type EventKind int

// The kinds of events a consumer reports.
const (
	// EventCommit: entries committed (IDs), in Duration.
	EventCommit EventKind = iota + 1
	// EventConflict: a commit was refused for a state version conflict
	// (Err wraps ErrVersionConflict); the handlers run again.
	EventConflict
	// EventFenced: entries were refused as no longer owned (Err wraps
	// ErrNotOwned); their transactions were dropped.
	EventFenced
	// EventRetry: a handler failed (Err); the entry will be retried.
	EventRetry
	// EventDeadLetter: an entry moved to the dead-letter stream (Err is
	// why).
	EventDeadLetter
	// EventClaim: entries idle at another consumer were claimed (IDs).
	EventClaim
	// EventError: an operational error (Err) — a failed read, a commit whose
	// outcome is unknown, a dead letter that could not be written, a Redis
	// error reply such as NOPERM or OOM (reported at every attempt, with the
	// entries concerned in IDs; see Consumer.Health). The consumer carries
	// on.
	EventError
	// EventAssigned: a consumer of a topic acquired partition Partition
	// under lease epoch Epoch, and consumes it from now on.
	EventAssigned
	// EventRevoked: a consumer of a topic stopped consuming partition
	// Partition: handed over to another member (Err nil, after the entries
	// in hand were committed or left pending), or its lease was lost (Err
	// says why).
	EventRevoked
)

var kindNames = [...]string{"", "commit", "conflict", "fenced", "retry", "dead-letter", "claim", "error", "assigned", "revoked"}

func (k EventKind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

// Event is something that happened in a consumer.
type Event struct {
	Kind       EventKind
	Stream     string
	Group      string
	Consumer   string
	IDs        []string      // the entries concerned, when any
	Deliveries int64         // for EventRetry and EventDeadLetter
	Err        error         // why, when it is a failure
	Duration   time.Duration // for EventCommit: the commit round trip
	// Topic is the topic of a consumer of a topic ("" for a stream).
	Topic string
	// Partition is the topic partition of the event (Stream is then the
	// partition's stream), or -1 for a consumer of a plain stream and for
	// a topic consumer's own events (heartbeats).
	Partition int
	Epoch     int64 // for EventAssigned: the lease epoch
}

// Observer receives a consumer's events. Observe is called synchronously
// from the consumer's goroutine: it must be quick and must not call back
// into the consumer. It must not modify the Event's slices.
type Observer interface {
	Observe(Event)
}

// ObserverFunc adapts a function to Observer.
type ObserverFunc func(Event)

// Observe calls f.
func (f ObserverFunc) Observe(e Event) { f(e) }
