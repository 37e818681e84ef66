package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

// cliTests are the end-to-end tests of this package that talk to Redis: the
// least-privilege and TLS tests run them again, each on a server of its own.
var cliTests = []struct {
	name string
	f    func(*testing.T)
}{
	{"Inspect", TestInspectCommand},
	{"InspectWatch", TestInspectWatchStopsOnCancel},
	{"Pending", TestPendingCommand},
	{"DLQ", TestDLQCommands},
	{"Trim", TestTrimCommand},
	{"State", TestStateCommand},
	{"RedisErrors", TestRunReportsRedisErrors},
	{"Binary", TestBinary},
	{"TopicCreate", TestTopicCreateCommand},
	{"TopicDescribe", TestTopicDescribeCommand},
	{"TopicInspectTrim", TestInspectAndTrimOnTopic},
}

// runCLITests runs cliTests as subtests of t, with fixtures from mk, and
// returns when they are all done.
func runCLITests(t *testing.T, mk func(t *testing.T) *fixture) {
	t.Helper()
	fixtureVariants.Store(t.Name(), mk)
	t.Cleanup(func() { fixtureVariants.Delete(t.Name()) })
	t.Run("all", func(t *testing.T) { // returns once its parallel subtests are done
		for _, tc := range cliTests {
			t.Run(tc.name, tc.f)
		}
	})
}

// The command's tests with the command connected as a user with the CLI
// role's rules (README.md): they pass, and ACL LOG stays empty. The tests
// set up their streams as the default user.
func TestCLIAsACLUser(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	admin := srv.Client(t)
	runCLITests(t, func(t *testing.T) *fixture {
		p := redistest.Prefix(t, admin)
		user, pw := redistest.CreateACLUser(t, admin, redistest.RoleCLI, "~"+p+"*")
		return &fixture{t: t, ctx: context.Background(), rdb: admin, p: p, url: srv.URL(user, pw)}
	})
	redistest.RequireNoACLDenials(t, admin)
}

// The command's tests over rediss:// to a server that listens with TLS
// only: the server verified against a test CA (REDIS_TLS_CA), and with
// mutual TLS a client certificate (REDIS_TLS_CERT, REDIS_TLS_KEY).
func TestCLIOverTLS(t *testing.T) {
	t.Parallel()
	for _, mutual := range []bool{false, true} {
		name := "verify-server"
		if mutual {
			name = "mutual"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			srv := redistest.StartTLSServer(t, mutual)
			admin := srv.Client(t)
			x := srv.TLS()
			runCLITests(t, func(t *testing.T) *fixture {
				env := map[string]string{"REDIS_TLS_CA": x.CA}
				if mutual {
					env["REDIS_TLS_CERT"], env["REDIS_TLS_KEY"] = x.ClientCert, x.ClientKey
				}
				return &fixture{t: t, ctx: context.Background(), rdb: admin, p: redistest.Prefix(t, admin),
					url: srv.URL("", ""), env: env}
			})
		})
	}
}

// The TLS flags: given on the command line, checked, and refused where they
// cannot apply.
func TestCLITLSFlags(t *testing.T) {
	t.Parallel()
	srv := redistest.StartTLSServer(t, true)
	admin := srv.Client(t)
	x := srv.TLS()
	f := &fixture{t: t, ctx: context.Background(), rdb: admin, p: redistest.Prefix(t, admin), url: srv.URL("", "")}
	s := f.p + "s"
	f.addIDs(s, "1-0")
	mtls := []string{"--tls-ca", x.CA, "--tls-cert", x.ClientCert, "--tls-key", x.ClientKey}

	assert.Contains(t, f.ok(append([]string{"inspect", s}, mtls...)...), "length         1")
	assert.Contains(t, f.ok(append(mtls, "inspect", s)...), "length         1", "before the command too")

	// Verification is on: without the CA the server is not trusted.
	noCA := f.fails(1, "inspect", s, "--tls-cert", x.ClientCert, "--tls-key", x.ClientKey)
	assert.Contains(t, noCA, "certificate")
	// Mutual TLS: without a client certificate the server hangs up.
	f.fails(1, "inspect", s, "--tls-ca", x.CA)

	// Mistakes in the flags.
	assert.Contains(t, f.fails(2, "inspect", s, "--tls-ca", x.CA, "--tls-cert", x.ClientCert), "go together")
	assert.Contains(t, f.fails(2, "--redis", "redis://"+srv.Addr(), "inspect", s, "--tls-ca", x.CA), "rediss://")
	missing := filepath.Join(t.TempDir(), "nope.crt")
	assert.Contains(t, f.fails(1, "inspect", s, "--tls-ca", missing), "--tls-ca")
	notPEM := filepath.Join(t.TempDir(), "empty.crt")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o600))
	assert.Contains(t, f.fails(1, "inspect", s, "--tls-ca", notPEM), "no PEM certificate")

	// The environment's TLS settings are ignored for redis://.
	f.env = map[string]string{"REDIS_TLS_CA": missing}
	plain := redistest.StartServer(t)
	assert.Contains(t, f.fails(1, "--redis", "redis://"+plain.Addr(), "inspect", s), "stream not found",
		"connected without TLS (the stream is on the other server)")

	// The usage names the flags.
	assert.Contains(t, f.ok("help"), "--tls-ca FILE")
	assert.Contains(t, f.ok("inspect", "--help"), "--tls-cert FILE")
}
