package streamtx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

func TestRetryable(t *testing.T) {
	yes := []error{
		io.EOF,
		fmt.Errorf("wrapped: %w", io.ErrUnexpectedEOF),
		&net.OpError{Op: "read", Err: errors.New("connection reset by peer")},
		net.ErrClosed,
		redis.ErrPoolTimeout,
		redis.ErrPoolTimeout,
		proto("LOADING Redis is loading the dataset in memory"),
		proto("READONLY You can't write against a read only replica."),
		proto("TRYAGAIN Multiple keys request during rehashing of slot"),
		proto("CLUSTERDOWN The cluster is down"),
		proto("MOVED 3999 127.0.0.1:6381"),
		proto("MASTERDOWN Link with MASTER is down"),
	}
	for _, err := range yes {
		require.True(t, retryable(err), "%v", err)
	}
	no := []error{
		proto("ERR Error running script"),
		proto("WRONGTYPE Operation against a key holding the wrong kind of value"),
		proto("NOSCRIPT No matching script"),
		context.Canceled,
		context.DeadlineExceeded,
		errors.New("connection refused by policy"),
	}
	for _, err := range no {
		require.False(t, retryable(err), "%v", err)
	}
}

type proto string

func (p proto) Error() string { return string(p) }
func (proto) RedisError()     {}
