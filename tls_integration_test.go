package streamtx_test

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

// The core exactly-once test over rediss:// to a server that listens with
// TLS only, the server verified against a test CA; with mutual TLS the
// client presents a certificate too.
func TestTLSCoreExactlyOnce(t *testing.T) {
	t.Parallel()
	for _, mutual := range []bool{false, true} {
		name := "verify-server"
		if mutual {
			name = "mutual"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.StartTLSServer(t, mutual)
			e := privateEnv(t, srv, false)
			x := srv.TLS()

			// The client a user would configure: rediss:// with the CA,
			// and the client certificate for mutual TLS.
			opts, err := redis.ParseURL(srv.URL("", ""))
			require.NoError(t, err)
			require.NotNil(t, opts.TLSConfig, "rediss:// means TLS")
			full := x.ClientConfig()
			opts.TLSConfig.RootCAs = full.RootCAs
			if mutual {
				opts.TLSConfig.Certificates = full.Certificates
			}
			client := redis.NewClient(opts)
			t.Cleanup(func() { client.Close() })

			// Verification is on: a client that does not trust the CA is
			// refused; with mutual TLS, so is one without a certificate.
			requirePingFails(t, srv.Addr(), &tls.Config{ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, "certificate")
			if mutual {
				requirePingFails(t, srv.Addr(), &tls.Config{RootCAs: full.RootCAs, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, "")
			}

			src := e.key("events")
			srcIDs := e.add(src, 2000, func(i int) map[string]any { return map[string]any{"i": i} })
			sharedCounterExactlyOnce(e, client, src, srcIDs)
		})
	}
}

// requirePingFails checks that a client with tc cannot talk to addr, and
// that the error says want.
func requirePingFails(t *testing.T, addr string, tc *tls.Config, want string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: tc, MaxRetries: -1})
	defer c.Close()
	err := c.Ping(context.Background()).Err()
	require.Error(t, err)
	require.Contains(t, err.Error(), want)
}
