package txnengine

import (
	"errors"
	"fmt"
)

// PublishKeyed buffers an XADD of values, with key in the reserved field
// partition.KeyField, to the partition of topic that key goes to. The topic
// is resolved through the Env's Topic. Like Publish, its error sticks to the
// Tx.
//
// It returns an error wrapping ErrBadPublish for a publish that can never
// commit: an unknown topic, an empty key, values that hold the key field, or
// one of Publish's reasons. Another error of the resolver (the topic's
// metadata could not be read) is returned as it is.
func (tx *Tx) PublishKeyed(topic, key string, values map[string]any) error {
	err := tx.publishKeyed(topic, key, values)
	if err != nil && tx.err == nil {
		tx.err = err
	}
	return err
}

func (tx *Tx) publishKeyed(topic, key string, values map[string]any) error {
	if tx.env == nil || tx.env.Topic == nil {
		return fmt.Errorf("%w: to topic %q: this transaction cannot resolve topics", ErrBadPublish, topic)
	}
	m, err := tx.env.Topic(topic)
	switch {
	case errors.Is(err, ErrBadPublish):
		return err
	case err != nil:
		return fmt.Errorf("txn: publish to topic %q: %w", topic, err)
	}
	stream, withKey, err := m.Route(key, values)
	if err != nil {
		return fmt.Errorf("%w: to topic %q: %w", ErrBadPublish, topic, err)
	}
	return tx.publish(stream, withKey)
}
