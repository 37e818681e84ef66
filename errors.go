package streamtx

import (
	"errors"
	"fmt"
)

// Sentinel errors. Each commit-script return code has one.
var (
	// ErrNotOwned is reported (to the Observer) when a commit or dead-letter
	// move was refused because an entry is no longer pending for this
	// consumer with the delivery count it was read with: it was committed
	// already (a lost reply), claimed by another consumer, or re-delivered
	// to a second process with the same name. The transaction is dropped and
	// the state reloaded.
	ErrNotOwned = errors.New("streamtx: entry not owned by this consumer")

	// ErrLeaseLost is reported (EventRevoked, EventFenced) when a consumer
	// of a topic lost a partition's lease without handing it over: it paused
	// or could not reach Redis past Config.LeaseTTL, and another member
	// acquired the partition under a new epoch. Its commits under the old
	// epoch are refused and write nothing.
	ErrLeaseLost = errors.New("streamtx: partition lease lost")

	// ErrVersionConflict is reported when a state record changed in Redis
	// since the handler read it (another consumer committed, or a failover
	// lost commits). The consumer reloads the state and runs the handlers
	// again.
	ErrVersionConflict = errors.New("streamtx: state version conflict")

	// ErrWrongType is reported when a publish target (or the dead-letter
	// stream) exists and is not a stream. Nothing of the commit is written;
	// the entries that published there fail permanently.
	ErrWrongType = errors.New("streamtx: publish target is not a stream")

	// ErrCrossSlot is returned by tx.Publish on a Redis Cluster client for a
	// target in another hash slot than the source stream.
	ErrCrossSlot = errors.New("streamtx: publish target is in another cluster slot")

	// ErrConfig is wrapped by every NewConsumer error about the Config; the
	// message names the field.
	ErrConfig = errors.New("streamtx: invalid config")

	// ErrCrashLoop is why an entry is dead-lettered when the process did not
	// survive handling it: delivered more than MaxDeliveries times without
	// its handler ever returning an error, it was then handled alone (its own
	// batch and commit), and MaxDeliveries of those attempts did not finish
	// either. Entries that merely shared a batch with it are not affected.
	ErrCrashLoop = errors.New("streamtx: crash loop: the process did not survive handling this entry")

	// ErrRunning is returned by Run when the consumer is already running.
	ErrRunning = errors.New("streamtx: consumer is already running")
)

// Permanent marks err as permanent: the entry is dead-lettered at once
// instead of being retried. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// PanicError is the error a handler's panic is turned into.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("streamtx: handler panic: %v", e.Value) }

// ConfigError is the error of an invalid Config (or handler, or client
// argument): Field names what is at fault, Reason says why. It matches
// ErrConfig with errors.Is.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return ErrConfig.Error() + ": " + e.Field + ": " + e.Reason
}

// Is reports whether target is ErrConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrConfig }

func configErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
