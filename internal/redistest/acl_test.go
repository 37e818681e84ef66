package redistest_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

// README.md prints the ACL rules of every role exactly as ACLSetUser makes
// them, so that the documented rules are the tested ones.
func TestREADMEHasTheACLRules(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	lines := strings.Split(string(b), "\n")
	for _, role := range redistest.Roles {
		want := redistest.ACLSetUser(role, "streamtx-"+string(role), "change-me", "~app:*")
		if !slices.Contains(lines, want) {
			t.Errorf("README.md should have this line for the %s role:\n%s", role, want)
		}
	}
}

// Every role's rules are accepted by the server on PATH (Redis 7.0 has no
// CLIENT SETINFO to name, for one), grant nothing of @admin or @dangerous,
// and a user made with them logs in.
func TestACLRulesAreAcceptedAndLeastPrivilege(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	admin := srv.Client(t)
	ctx := context.Background()
	for _, role := range redistest.Roles {
		user, pw := redistest.CreateACLUser(t, admin, role, "~app:*")
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: user, Password: pw})
		require.NoError(t, c.Ping(ctx).Err(), role)
		for _, cmd := range [][]any{{"config", "get", "maxmemory"}, {"flushall"}, {"keys", "*"}, {"client", "list"},
			{"info"}, {"acl", "whoami"}, {"script", "load", "return 1"}, {"get", "other:key"}} {
			err := c.Do(ctx, cmd...).Err()
			if cmd[0] == "acl" { // ACL WHOAMI is not @admin, but is not granted either
				require.Error(t, err)
				continue
			}
			require.ErrorContains(t, err, "NOPERM", "%s may not %v", role, cmd)
		}
		require.NoError(t, c.Close())
	}
}
