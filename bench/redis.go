package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// group is the consumer group of every run.
	group = "g"
	// numKeys is the number of distinct entity keys in the entries ("k0" …
	// "k999"), the key space of the Keyed scenario.
	numKeys = 1000
	// preloadChunk is the number of XADDs sent in one pipeline.
	preloadChunk = 1000
	// cleanupTimeout bounds the key deletion after a run.
	cleanupTimeout = 30 * time.Second
)

// checkLoopback refuses a Redis that is not on this machine: the benchmark
// writes and deletes keys, and what it measures is a local round trip.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-redis %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else if ips, err = net.LookupIP(host); err != nil {
		return fmt.Errorf("-redis %q: %w", addr, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return fmt.Errorf("-redis %q: %s is not a loopback address; the benchmark only runs against a local Redis", addr, ip)
		}
	}
	if len(ips) == 0 {
		return fmt.Errorf("-redis %q: host has no address", addr)
	}
	return nil
}

// keyName is the entity key of entry i.
func keyName(i int) string { return "k" + strconv.Itoa(i%numKeys) }

// entryValues are the fields of entry i: an entity key and a sequence number.
func entryValues(i int) []any {
	return []any{"k", keyName(i), "v", strconv.Itoa(i)}
}

// preload appends entries first … first+n-1 to stream with pipelined XADDs.
func preload(ctx context.Context, rdb *redis.Client, stream string, first, n int) error {
	for i := first; i < first+n; i += preloadChunk {
		pipe := rdb.Pipeline()
		for j := i; j < min(i+preloadChunk, first+n); j++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: entryValues(j)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("preload %s: %w", stream, err)
		}
	}
	return nil
}

// deleteRun deletes every key of the run with the given prefix: the streams
// (prefix*) and what streamtx derived from them (stx:{prefix*). It runs
// even when ctx is cancelled, under its own timeout.
func deleteRun(ctx context.Context, rdb *redis.Client, prefix string, streams ...string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var errs []error
	if len(streams) > 0 {
		errs = append(errs, rdb.Del(ctx, streams...).Err())
	}
	for _, pattern := range []string{prefix + "*", "stx:{" + prefix + "*"} {
		errs = append(errs, deleteMatching(ctx, rdb, pattern))
	}
	return errors.Join(errs...)
}

// deleteMatching unlinks the keys matching pattern (SCAN MATCH), never the
// whole database: the server may be shared.
func deleteMatching(ctx context.Context, rdb *redis.Client, pattern string) error {
	var cursor uint64
	for {
		keys, next, err := rdb.Scan(ctx, cursor, pattern, 1000).Result()
		if err != nil {
			return fmt.Errorf("scan %q: %w", pattern, err)
		}
		if len(keys) > 0 {
			if err := rdb.Unlink(ctx, keys...).Err(); err != nil {
				return fmt.Errorf("unlink %q: %w", pattern, err)
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

// redisInfo returns the fields of INFO section as a map.
func redisInfo(ctx context.Context, rdb *redis.Client, section string) (map[string]string, error) {
	text, err := rdb.Info(ctx, section).Result()
	if err != nil {
		return nil, err
	}
	m := make(map[string]string)
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// redisCPU returns the CPU time Redis has used (user + system, all threads).
func redisCPU(ctx context.Context, rdb *redis.Client) (time.Duration, error) {
	info, err := redisInfo(ctx, rdb, "cpu")
	if err != nil {
		return 0, err
	}
	var total float64
	for _, f := range []string{"used_cpu_sys", "used_cpu_user"} {
		v, err := strconv.ParseFloat(info[f], 64)
		if err != nil {
			return 0, fmt.Errorf("INFO cpu %s=%q: %w", f, info[f], err)
		}
		total += v
	}
	return time.Duration(total * float64(time.Second)), nil
}

// procStatusKiB returns a "Vm…" field of /proc/self/status in KiB, or 0
// where there is no /proc.
func procStatusKiB(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
		n, _ := strconv.ParseInt(v, 10, 64)
		return n
	}
	return 0
}

// resetPeakRSS resets VmHWM to the current RSS (Linux ≥ 4.0), so that the
// peak of one run can be read. It reports whether that worked.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// loadAvg returns the 1, 5 and 15 minute load averages, or "".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// cpuModel returns the CPU model name from /proc/cpuinfo, or "".
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
