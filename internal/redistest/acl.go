package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Role is a kind of streamtx client, each with its own least-privilege ACL
// rules. README.md ("Least privilege (ACL) and TLS") prints the rules of
// every role as ACLSetUser makes them; a test checks the two agree.
type Role string

// The roles.
const (
	// RoleConsumer runs Consumer.Run (with Retention), and reads state with
	// ReadState and ReadKeyedState.
	RoleConsumer Role = "consumer"
	// RoleProducer runs Producer.Publish.
	RoleProducer Role = "producer"
	// RoleRelay runs the Consumer that NewRelay returns.
	RoleRelay Role = "relay"
	// RoleCLI runs every command of cmd/streamtx (and the library calls
	// behind them: Inspect, TrimSafe, ListDeadLetters, ReplayDeadLetters,
	// PurgeDeadLetters, ReadState).
	RoleCLI Role = "cli"
)

// Roles lists every role, in the README's order.
var Roles = []Role{RoleConsumer, RoleProducer, RoleRelay, RoleCLI}

// aclConnection lets a client connect and identify itself (go-redis sends
// CLIENT SETINFO on Redis 7.2 and later, which Redis 7.0 does not know and
// so cannot name in a rule) without anything of @admin or @dangerous:
// aclGuard, last in every line, takes away whatever a category brought in.
var (
	aclConnection = []string{"+@connection"}
	aclGuard      = []string{"-@admin", "-@dangerous"}
)

// aclCommands are the commands of each role: what the Go code sends (go-redis
// Script.Run sends EVALSHA, then EVAL on NOSCRIPT; it never sends SCRIPT LOAD)
// and what the Lua scripts under lua/ call, which Redis checks against the
// ACL too.
var aclCommands = map[Role][]string{
	RoleConsumer: {
		// XGROUP CREATE … MKSTREAM, then XREADGROUP.
		"+xgroup|create", "+xreadgroup",
		// claim.lua, commit.lua, deadletter.lua; EVAL when the script
		// cache is empty.
		"+evalsha", "+eval",
		"+xpending", "+xclaim", "+xautoclaim", "+xack", "+xadd", "+type",
		"+getrange", "+set", "+hget", "+hset",
		// State loads (MGET), ReadState (GET).
		"+mget", "+get",
		// Retention: XREVRANGE and TIME in Go, then trim.lua.
		"+xrevrange", "+time", "+xinfo|groups", "+xtrim",
		// The per-entry suspect counter.
		"+incr", "+pexpire", "+del",
		// Topics: members.lua and lease.lua (TIME, sorted set, hash), the
		// fence (HMGET), XREAD to wait for new entries.
		"+zadd", "+zrem", "+zrange", "+zremrangebyscore", "+hmget", "+hincrby", "+xread",
		// read.lua sent again after a lost reply returns its entries again.
		"+xrange",
	},
	RoleProducer: {
		// produce.lua: dedupe record (GET, SET … PX), TYPE, XADD.
		"+evalsha", "+eval", "+get", "+type", "+xadd", "+set",
	},
	RoleRelay: {
		// A Consumer of the outbox without state: commit.lua, claim.lua,
		// deadletter.lua, retention; forward.lua (GET, TYPE, XADD, SET … PX).
		"+xgroup|create", "+xreadgroup",
		"+evalsha", "+eval",
		"+xpending", "+xclaim", "+xautoclaim", "+xack", "+xadd", "+type",
		"+get", "+set", "+hget", "+hset",
		"+xrevrange", "+time", "+xinfo|groups", "+xtrim",
		"+incr", "+pexpire", "+del",
	},
	RoleCLI: {
		// inspect: XINFO, TIME, XPENDING, HGETALL, XLEN, XRANGE (lag count).
		"+xinfo|stream", "+xinfo|groups", "+xinfo|consumers", "+time",
		"+xpending", "+hgetall", "+xlen", "+xrange",
		// dlq replay (replay.lua: TYPE, XRANGE, XADD, XDEL), purge (XDEL,
		// XTRIM MAXLEN 0).
		"+evalsha", "+eval", "+type", "+xadd", "+xdel", "+xtrim",
		// trim --safe (trim.lua), trim --force (XREVRANGE, XTRIM).
		"+xrevrange",
		// state get.
		"+get",
		// topic create (SET NX GET of the metadata record), topic describe
		// and inspect of a topic (the members' sorted set).
		"+set", "+zrange",
	},
}

// ACLRules returns the ACL rules of role for a user whose application
// streams (sources, publish targets, custom dead-letter streams) match
// streams, ACL key patterns such as "~orders*". Every key streamtx derives
// starts with "stx:". The rules start with reset, so applying them to an
// existing user replaces what it had.
func ACLRules(role Role, streams ...string) []string {
	cmds, ok := aclCommands[role]
	if !ok {
		panic(fmt.Sprintf("redistest: unknown role %q", role))
	}
	rules := []string{"reset", "on"}
	rules = append(rules, streams...)
	rules = append(rules, "~stx:*", "resetchannels", "-@all")
	rules = append(rules, aclConnection...)
	rules = append(rules, cmds...)
	return append(rules, aclGuard...)
}

// ACLSetUser returns the redis-cli command that creates user with role's
// rules and password: the lines README.md prints.
func ACLSetUser(role Role, user, password string, streams ...string) string {
	rules := ACLRules(role, streams...)
	// The password goes right after "on".
	rules = slices.Insert(rules, 2, ">"+password)
	return "ACL SETUSER " + user + " " + strings.Join(rules, " ")
}

// CreateACLUser creates, on the server admin is connected to, a user with
// role's rules (ACLRules), a random password and a name unique to the test,
// and deletes it when the test ends. It returns the user name and password.
func CreateACLUser(t testing.TB, admin redis.UniversalClient, role Role, streams ...string) (user, password string) {
	t.Helper()
	return CreateACLUserRules(t, admin, string(role), ACLRules(role, streams...))
}

// CreateACLUserRules is CreateACLUser with rules of the caller's choosing
// (starting with "reset", "on", as ACLRules's), for a user named after
// name and the test.
func CreateACLUserRules(t testing.TB, admin redis.UniversalClient, name string, rules []string) (user, password string) {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	// No "/": the name goes into redis:// URLs.
	user = "stx-" + name + "-" + strings.ReplaceAll(sanitize(t.Name()), "/", ".") + "-" + hex.EncodeToString(b[:4])
	password = hex.EncodeToString(b[4:]) + "-pw"
	args := []any{"ACL", "SETUSER", user}
	for _, r := range rules {
		args = append(args, r)
	}
	args = append(args, ">"+password) // after the rules' reset
	ctx := context.Background()
	if err := admin.Do(ctx, args...).Err(); err != nil {
		t.Fatalf("redistest: ACL SETUSER %s: %v", user, err)
	}
	t.Cleanup(func() {
		if err := admin.Do(context.Background(), "ACL", "DELUSER", user).Err(); err != nil {
			t.Logf("redistest: ACL DELUSER %s: %v", user, err)
		}
	})
	return user, password
}

// ACLLogEntry is one entry of ACL LOG: a command or key a user was refused.
type ACLLogEntry struct {
	Reason, Context, Object, Username string
	Count                             int64
}

func (e ACLLogEntry) String() string {
	return fmt.Sprintf("user %s refused %s %q (%s, %d times)", e.Username, e.Reason, e.Object, e.Context, e.Count)
}

// ACLLog returns the entries of ACL LOG, newest first.
func ACLLog(t testing.TB, admin redis.UniversalClient) []ACLLogEntry {
	t.Helper()
	v, err := admin.Do(context.Background(), "ACL", "LOG").Slice()
	if err != nil {
		t.Fatalf("redistest: ACL LOG: %v", err)
	}
	var out []ACLLogEntry
	for _, row := range v {
		var e ACLLogEntry
		fields := map[string]any{}
		switch r := row.(type) {
		case map[any]any: // RESP3
			for k, v := range r {
				fields[fmt.Sprint(k)] = v
			}
		case []any: // RESP2: field, value, …
			for i := 0; i+1 < len(r); i += 2 {
				fields[fmt.Sprint(r[i])] = r[i+1]
			}
		default:
			t.Fatalf("redistest: ACL LOG row of type %T", row)
		}
		e.Reason = fmt.Sprint(fields["reason"])
		e.Context = fmt.Sprint(fields["context"])
		e.Object = fmt.Sprint(fields["object"])
		e.Username = fmt.Sprint(fields["username"])
		e.Count, _ = fields["count"].(int64)
		out = append(out, e)
	}
	return out
}

// RequireNoACLDenials fails t if ACL LOG holds any entry.
func RequireNoACLDenials(t testing.TB, admin redis.UniversalClient) {
	t.Helper()
	if log := ACLLog(t, admin); len(log) > 0 {
		var b strings.Builder
		for _, e := range log {
			b.WriteString("\n  " + e.String())
		}
		t.Fatalf("ACL LOG is not empty:%s", b.String())
	}
}
