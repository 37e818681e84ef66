// Command streamtx operates streams consumed with streamtx: it inspects a
// stream and its groups, lists pending entries, lists, replays and purges
// dead letters, trims a stream safely, prints committed state, and creates
// and describes partitioned topics.
//
// Install it with
//
//	go install github.com/streamtx/streamtx/cmd/streamtx@latest
//
// # Usage
//
//	streamtx [--redis URL] COMMAND [ARGS] [FLAGS]
//
//	inspect STREAM [--json] [--watch D [--count N]]
//	pending STREAM GROUP [--older-than D] [--consumer NAME] [--from ID] [--count N] [--json]
//	dlq list STREAM GROUP [--from ID] [--count N] [--json]
//	dlq show STREAM GROUP ID [--json]
//	dlq replay STREAM GROUP (ID... | --all)
//	dlq purge STREAM GROUP (ID... | --all --yes)
//	trim STREAM --safe [--keep-min-age D] [--dry-run]
//	trim STREAM --force (--maxlen N | --minid ID) [--dry-run]
//	state get STREAM GROUP NAME [KEY]
//	topic create TOPIC --partitions N [--colocate NAME]
//	topic describe TOPIC [--group GROUP] [--json]
//	console [--listen ADDR] [--read-only] [--streams S1,S2] [--match PATTERN]
//
// inspect and trim --safe accept a topic's name for STREAM (when no stream
// has that name): they work on each of its partition streams.
//
// Flags may come before or after the arguments. --redis (default: the
// REDIS_URL environment variable, else redis://127.0.0.1:6379) takes a URL
// in one of three forms:
//
//	redis://[USER:PASSWORD@]HOST:PORT[/DB]                     one server
//	redis://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]?cluster=true
//	                                                           a Redis Cluster, through any of its nodes
//	redis-sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT...]/MASTER[/DB]
//	                                                           the master the sentinels at HOST:PORT name MASTER
//
// rediss:// and rediss-sentinel:// connect with TLS. USER and PASSWORD are
// the Redis user's; sentinels that require a password of their own take it
// as ?sentinel_password=P (and sentinel_username=U). Other query parameters
// are go-redis's options (dial_timeout=3s, ...). With TLS, --tls-ca FILE
// (default $REDIS_TLS_CA) verifies the servers against that CA certificate
// (PEM) instead of the system's roots, and --tls-cert FILE --tls-key FILE
// (defaults $REDIS_TLS_CERT, $REDIS_TLS_KEY) present a client certificate,
// for servers with tls-auth-clients yes; the environment's defaults are
// ignored without TLS. The dlq commands accept --dlq KEY for a consumer
// configured with its own Config.DeadLetterStream.
//
// # Exit status
//
//	0  success
//	1  failure: a Redis error, or what was asked for does not exist (a
//	   stream, a dead letter, a state record, a topic), or a safe trim is
//	   refused (a stream without groups), or a topic exists with another
//	   partition count
//	2  usage error: unknown command or flag, missing or extra arguments
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
)

const defaultRedisURL = "redis://127.0.0.1:6379"

const usageText = `streamtx operates streams consumed with streamtx.

Usage:
  streamtx [--redis URL] COMMAND [ARGS] [FLAGS]

Commands:
  inspect STREAM [--json] [--watch D [--count N]]
      length, groups, lag, pending entries, consumers, committed offsets,
      dead letters and the safe trim point
  pending STREAM GROUP [--older-than D] [--consumer NAME] [--from ID] [--count N] [--json]
      pending entries: owner, idle time, deliveries
  dlq list STREAM GROUP [--from ID] [--count N] [--json]
  dlq show STREAM GROUP ID [--json]
  dlq replay STREAM GROUP (ID... | --all)
  dlq purge STREAM GROUP (ID... | --all --yes)
      the group's dead letters (--dlq KEY for a custom dead-letter stream)
  trim STREAM --safe [--keep-min-age D] [--dry-run]
      remove only entries every group has received and acknowledged
  trim STREAM --force (--maxlen N | --minid ID) [--dry-run]
      an explicit, unsafe trim
  state get STREAM GROUP NAME [KEY]
      committed state (KEY for Keyed state) as JSON, with version and last ID
  topic create TOPIC --partitions N [--colocate NAME]
      create a partitioned topic (idempotent); prints its partition streams
  topic describe TOPIC [--group GROUP] [--json]
      partitions, their owner per group (lease epoch, time left), lag,
      pending entries, and the group's members
  console [--listen 127.0.0.1:8080] [--read-only] [--streams S1,S2] [FLAGS]
      the web console: lag, pending entries, dead letters (replay, purge), state
  help [COMMAND]
      this text, or a command's flags

Global flags (also accepted after the command):
  --redis URL       Redis to use; default $REDIS_URL, else ` + defaultRedisURL + `
                    one server:  redis://[user:password@]host:port[/db]
                    a cluster:   redis://[user:password@]host:port[,host:port...]?cluster=true
                    Sentinel:    redis-sentinel://[user:password@]host:port[,host:port...]/master[/db]
                                 (?sentinel_password=P for sentinels with a password)
                    rediss:// and rediss-sentinel:// for TLS
  --tls-ca FILE     with TLS: verify the servers against this CA
                    certificate (PEM); default $REDIS_TLS_CA, else the
                    system's roots
  --tls-cert FILE   with TLS: present this client certificate (PEM)
  --tls-key FILE    and its key, for mutual TLS; default $REDIS_TLS_CERT
                    and $REDIS_TLS_KEY

inspect and trim --safe accept a topic for STREAM: they work on each
partition stream.

Durations are Go durations: 500ms, 30s, 5m, 1h30m.

Exit status:
  0  success
  1  failure: a Redis error; a stream, dead letter, state record or topic
     not found; a safe trim refused; a topic exists with other partitions
  2  usage error
`

func main() {
	// go-redis logs dial failures to stderr on its own; the error reaches
	// the user through run's message.
	redis.SetLogger(quietLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// errHelp is returned when help was asked for and printed: exit status 0.
var errHelp = errors.New("help")

// errReported is returned after the failure was written to stderr already.
var errReported = errors.New("reported")

// cli is one run of the command.
type cli struct {
	stdout, stderr io.Writer
	env            func(string) string
	redisURL       string
	tlsCA          fileFlag // --tls-ca
	tlsCert        fileFlag // --tls-cert
	tlsKey         fileFlag // --tls-key
	rdb            redis.UniversalClient
}

// command is one subcommand.
type command struct {
	name     string
	synopsis string // after "streamtx "
	run      func(ctx context.Context, c *cli, args []string) error
}

var commands = []command{
	{"inspect", "inspect STREAM [--json] [--watch D [--count N]]", runInspect},
	{"pending", "pending STREAM GROUP [--older-than D] [--consumer NAME] [--from ID] [--count N] [--json]", runPending},
	{"dlq", "dlq (list|show|replay|purge) STREAM GROUP [IDs...] [FLAGS]", runDLQ},
	{"trim", "trim STREAM (--safe [--keep-min-age D] | --force (--maxlen N | --minid ID)) [--dry-run]", runTrim},
	{"state", "state get STREAM GROUP NAME [KEY]", runState},
	{"topic", "topic (create|describe) TOPIC [FLAGS]", runTopic},
	{"console", "console [--listen ADDR] [--read-only] [FLAGS]", runConsole},
}

// run runs the command line args (without the program name), writing to
// stdout and stderr and reading the environment through env, and returns
// the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	c := &cli{stdout: stdout, stderr: stderr, env: env}
	defer func() {
		if c.rdb != nil {
			c.rdb.Close()
		}
	}()
	err := c.dispatch(ctx, args)
	var ue *usageError
	switch {
	case err == nil || errors.Is(err, errHelp):
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "streamtx: %s\nRun 'streamtx help' for usage.\n", ue.msg)
		return exitUsage
	case errors.Is(err, errReported):
		return exitFailure
	default:
		msg := err.Error()
		if !strings.HasPrefix(msg, "streamtx: ") {
			msg = "streamtx: " + msg
		}
		fmt.Fprintln(stderr, msg)
		return exitFailure
	}
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("streamtx", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.addRedisFlag(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(c.stdout, usageText)
			return errHelp
		}
		return usagef("%v", err)
	}
	args = fs.Args()
	if len(args) == 0 {
		return usagef("no command")
	}
	name, args := args[0], args[1:]
	if name == "help" {
		if len(args) == 0 {
			fmt.Fprint(c.stdout, usageText)
			return errHelp
		}
		name, args = args[0], []string{"--help"}
	}
	for _, cmd := range commands {
		if cmd.name == name {
			return cmd.run(ctx, c, args)
		}
	}
	return usagef("unknown command %q", name)
}

// addRedisFlag adds --redis to fs, defaulting to what was given before the
// command, then to $REDIS_URL.
func (c *cli) addRedisFlag(fs *flag.FlagSet) {
	def := c.redisURL
	if def == "" {
		def = c.env("REDIS_URL")
	}
	if def == "" {
		def = defaultRedisURL
	}
	fs.StringVar(&c.redisURL, "redis", def, "Redis `URL`: redis://[user:password@]host:port[/db]; redis://host:port[,host:port...]?cluster=true for a cluster; redis-sentinel://host:port[,host:port...]/master[/db] for Sentinel; rediss:// and rediss-sentinel:// for TLS")
	for _, f := range []struct {
		v         *fileFlag
		name, env string
		usage     string
	}{
		{&c.tlsCA, "tls-ca", "REDIS_TLS_CA", "with TLS, verify the servers against this CA certificate `FILE` (PEM) instead of the system's roots"},
		{&c.tlsCert, "tls-cert", "REDIS_TLS_CERT", "with TLS, present this client certificate `FILE` (PEM); needs --tls-key"},
		{&c.tlsKey, "tls-key", "REDIS_TLS_KEY", "the private key `FILE` (PEM) of --tls-cert"},
	} {
		if !f.v.set && f.v.path == "" {
			f.v.path = c.env(f.env)
		}
		fs.Var(f.v, f.name, f.usage)
	}
}

// fileFlag is a file name flag that remembers whether the command line set
// it (not only its environment variable).
type fileFlag struct {
	path string
	set  bool
}

func (f *fileFlag) String() string {
	if f == nil {
		return ""
	}
	return f.path
}

func (f *fileFlag) Set(s string) error {
	f.path, f.set = s, true
	return nil
}

// client returns the Redis client for --redis, created on first use: of
// one server, of a cluster, or of the master Sentinel names.
func (c *cli) client() (redis.UniversalClient, error) {
	if c.rdb != nil {
		return c.rdb, nil
	}
	target, err := parseRedisURL(c.redisURL)
	if err != nil {
		return nil, usagef("--redis %s: %v", redactURL(c.redisURL), err)
	}
	if err := c.setupTLS(target.tlsConfig()); err != nil {
		return nil, err
	}
	c.rdb = target.newClient()
	return c.rdb, nil
}

// setupTLS applies --tls-ca, --tls-cert and --tls-key to the TLS
// configuration of a rediss:// or rediss-sentinel:// URL (nil without TLS).
func (c *cli) setupTLS(cfg *tls.Config) error {
	ca, cert, key := c.tlsCA.path, c.tlsCert.path, c.tlsKey.path
	if cfg == nil {
		// The environment's defaults do not apply without TLS; flags are
		// a mistake.
		if c.tlsCA.set || c.tlsCert.set || c.tlsKey.set {
			return usagef("--tls-ca, --tls-cert and --tls-key need a rediss:// or rediss-sentinel:// URL, not %s", redactURL(c.redisURL))
		}
		return nil
	}
	if (cert == "") != (key == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	if ca != "" {
		b, err := os.ReadFile(ca)
		if err != nil {
			return fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("--tls-ca %s: no PEM certificate in it", ca)
		}
		cfg.RootCAs = pool
	}
	if cert != "" {
		cert, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return nil
}

// flags is a subcommand's flag set with its synopsis.
type flags struct {
	*flag.FlagSet
	c        *cli
	synopsis string
	help     string
}

func (c *cli) newFlags(synopsis, help string) *flags {
	fs := flag.NewFlagSet("streamtx", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.addRedisFlag(fs)
	return &flags{FlagSet: fs, c: c, synopsis: synopsis, help: help}
}

// parse parses args, flags and arguments in any order ("--" ends flags),
// and checks the number of arguments is within [min, max] (max < 0: no
// limit). On --help it prints the command's usage and returns errHelp.
func (f *flags) parse(args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.printUsage(f.c.stdout)
				return nil, errHelp
			}
			return nil, usagef("%s: %v", f.synopsis, err)
		}
		rest := f.Args()
		if len(rest) == 0 {
			break
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) < min || (max >= 0 && len(pos) > max) {
		return nil, usagef("usage: streamtx %s", f.synopsis)
	}
	return pos, nil
}

func (f *flags) printUsage(w io.Writer) {
	fmt.Fprintf(w, "Usage: streamtx %s\n\n%s\nFlags:\n", f.synopsis, f.help)
	f.VisitAll(func(fl *flag.Flag) {
		arg, usage := flag.UnquoteUsage(fl)
		line := "  --" + fl.Name
		if arg != "" {
			line += " " + arg
		}
		def := fl.DefValue
		if fl.Name == "redis" {
			def = redactURL(def)
		}
		if def != "" && def != "0" && def != "false" && def != "0s" {
			usage += fmt.Sprintf(" (default %s)", def)
		}
		fmt.Fprintf(w, "%s\n      %s\n", line, usage)
	})
	fmt.Fprint(w, "\nExit status: 0 success, 1 failure or not found, 2 usage error.\n")
}
