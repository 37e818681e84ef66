package streamtx_test

import (
	"errors"
	"fmt"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/txn"
)

type OrderPlaced struct {
	Order  string
	Amount int
}

// A handler publishes a typed event with PublishEnvelope; a reader decodes
// it with Decode, which marks every failure Permanent so that the consumer
// dead-letters the entry instead of retrying it.
func ExampleDecode() {
	tx := txn.New(nil, "1-0") // in a handler, the consumer passes tx
	err := streamtx.PublishEnvelope(tx, "orders.placed", streamtx.Envelope[OrderPlaced]{
		ID:     "order-42",
		Type:   "com.example.order.placed",
		Source: "/shop",
		Data:   OrderPlaced{Order: "42", Amount: 1999},
	})
	if err != nil {
		panic(err)
	}

	// What the reader's handler receives: the entry's fields.
	pub := tx.Publishes()[0]
	values := map[string]string{}
	for i := 0; i < len(pub.Fields); i += 2 {
		values[pub.Fields[i]] = pub.Fields[i+1]
	}
	msg := &streamtx.Message{Stream: pub.Stream, ID: "1700000000000-0", Values: values}

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
