package streamtx_test

import (
	"errors"
	"fmt"

	"github.com/streamtx/streamtx"
)

type OrderPlaced struct {
	Order  string
	Amount int
}

// A handler publishes a typed event with PublishEnvelope (tx.Publish of
// the envelope's Fields); a reader decodes it with Decode, which marks every
// failure Permanent so that the consumer dead-letters the entry instead of
// retrying it.
func ExampleDecode() {
	fields, err := streamtx.Envelope[OrderPlaced]{
		ID:     "order-42",
		Type:   "com.example.order.placed",
		Source: "/shop",
		Data:   OrderPlaced{Order: "42", Amount: 1999},
	}.Fields() // in a handler: streamtx.PublishEnvelope(tx, "orders.placed", envelope)
	if err != nil {
		panic(err)
	}

	// What the reader's handler receives: the entry's fields, as Redis
	// stores them (byte strings).
	values := map[string]string{}
	for k, v := range fields {
		if b, ok := v.([]byte); ok {
			values[k] = string(b)
		} else {
			values[k] = fmt.Sprint(v)
		}
	}
	msg := &streamtx.Message{Stream: "orders.placed", ID: "1700000000000-0", Values: values}

	e, err := streamtx.Decode[OrderPlaced](msg)
	fmt.Println(e.Type, e.SchemaVersion, e.DataContentType, e.Data, err)

	// A reader that knows only version 1 refuses version 2, permanently.
	msg.Values["schemaversion"] = "2"
	_, err = streamtx.Decode[OrderPlaced](msg)
	fmt.Println(streamtx.IsPermanent(err), errors.Is(err, streamtx.ErrSchemaVersion))
	// Output:
	// com.example.order.placed 1 application/msgpack {42 1999} <nil>
	// true true
}
