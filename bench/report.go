package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// runResult is one run of one combination.
type runResult struct {
	Scenario           string  `json:"scenario"`
	Batch              int     `json:"batch"`
	Consumers          int     `json:"consumers"`
	Repeat             int     `json:"repeat"`
	Entries            int     `json:"entries"`
	Seconds            float64 `json:"seconds"`
	EntriesPerSec      float64 `json:"entries_per_sec"`
	AllocsPerEntry     float64 `json:"allocs_per_entry"`
	BytesPerEntry      float64 `json:"bytes_per_entry"`
	GoCPUPerEntryUS    float64 `json:"go_cpu_us_per_entry"`
	RedisCPUPerEntryUS float64 `json:"redis_cpu_us_per_entry"`
	PeakRSSMiB         float64 `json:"peak_rss_mib,omitempty"`
	Conflicts          int64   `json:"conflicts"`
	Fenced             int64   `json:"fenced"`
	Retries            int64   `json:"retries"`
	Errors             int64   `json:"errors"`
	Assigned           int64   `json:"assigned,omitempty"` // topics: EventAssigned
	Revoked            int64   `json:"revoked,omitempty"`  // topics: EventRevoked
	TimedOut           bool    `json:"timed_out,omitempty"`
	Check              string  `json:"check"`
}

// row summarises the repeats of one combination: medians, except the peak
// RSS (the highest).
type row struct {
	Scenario           string  `json:"scenario"`
	Batch              int     `json:"batch"`
	Consumers          int     `json:"consumers"`
	Repeats            int     `json:"repeats"`
	EntriesPerSec      float64 `json:"entries_per_sec_median"`
	Baseline           string  `json:"baseline"`
	Ratio              float64 `json:"ratio_to_baseline"`
	AllocsPerEntry     float64 `json:"allocs_per_entry"`
	BytesPerEntry      float64 `json:"bytes_per_entry"`
	GoCPUPerEntryUS    float64 `json:"go_cpu_us_per_entry"`
	RedisCPUPerEntryUS float64 `json:"redis_cpu_us_per_entry"`
	Conflicts          float64 `json:"conflicts_median"`
	PeakRSSMiB         float64 `json:"peak_rss_mib_max"`
	Check              string  `json:"check"`
}

type machineInfo struct {
	GoVersion    string `json:"go_version"`
	OS           string `json:"os"`
	Arch         string `json:"arch"`
	NumCPU       int    `json:"num_cpu"`
	GOMAXPROCS   int    `json:"gomaxprocs"`
	CPUModel     string `json:"cpu_model,omitempty"`
	RedisVersion string `json:"redis_version"`
	RedisAddr    string `json:"redis_addr"`
	Entries      int    `json:"entries_per_run"`
	Repeats      int    `json:"repeats"`
	Quick        bool   `json:"quick"`
	Partitions   int    `json:"partitions"`
	RawTopic     string `json:"raw_topic"`
	TopicStart   string `json:"topic_start"` // "warm" or "cold" (-topic-cold)
	LeaseTTL     string `json:"lease_ttl"`   // of the topic scenarios
	Date         string `json:"date"`
	Elapsed      string `json:"elapsed,omitempty"`
	LoadStart    string `json:"loadavg_start,omitempty"`
	LoadEnd      string `json:"loadavg_end,omitempty"`
}

type report struct {
	Machine    machineInfo     `json:"machine"`
	Rows       []row           `json:"rows,omitempty"`
	Latency    []latencyResult `json:"latency,omitempty"`
	PeakRSSMiB float64         `json:"peak_rss_mib"`
	Flat       []flatSample    `json:"flat,omitempty"`
	FlatBatch  int             `json:"flat_batch,omitempty"`
	FlatWindow int             `json:"flat_window,omitempty"`
	FlatCheck  string          `json:"flat_check,omitempty"`
	Runs       []runResult     `json:"runs,omitempty"`
	Rebalance  []rebalanceRun  `json:"rebalance,omitempty"`
}

func machine(ctx context.Context, rdb *redis.Client, opt options) machineInfo {
	m := machineInfo{
		GoVersion:  runtime.Version(),
		OS:         runtime.GOOS,
		Arch:       runtime.GOARCH,
		NumCPU:     runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		CPUModel:   cpuModel(),
		RedisAddr:  opt.redis,
		Entries:    opt.n,
		Repeats:    opt.repeats,
		Quick:      opt.quick,
		Partitions: opt.partitions,
		RawTopic:   opt.rawTopic,
		TopicStart: "warm",
		LeaseTTL:   "default (10s)",
		Date:       time.Now().UTC().Format(time.RFC3339),
		LoadStart:  loadAvg(),
	}
	if opt.topicCold {
		m.TopicStart = "cold"
	}
	if opt.leaseTTL > 0 {
		m.LeaseTTL = opt.leaseTTL.String()
	}
	if info, err := redisInfo(ctx, rdb, "server"); err == nil {
		m.RedisVersion = info["redis_version"]
	}
	return m
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summarize groups the runs by combination, in the order they ran, and sets
// each row's ratio to its baseline (raw-alo, or raw-alo-topic for the topic
// scenarios) at the same batch size and consumer count.
func summarize(runs []runResult, opt options) []row {
	type combo struct {
		scenario         string
		batch, consumers int
	}
	byCombo := map[combo][]runResult{}
	for _, r := range runs {
		c := combo{r.Scenario, r.Batch, r.Consumers}
		byCombo[c] = append(byCombo[c], r)
	}
	var rows []row
	for _, batch := range opt.batches {
		for _, consumers := range opt.consumers {
			base := map[string]float64{}
			for _, sc := range opt.scenarios {
				rs := byCombo[combo{sc, batch, consumers}]
				if len(rs) == 0 {
					continue
				}
				col := func(f func(runResult) float64) float64 {
					xs := make([]float64, len(rs))
					for i, r := range rs {
						xs[i] = f(r)
					}
					return median(xs)
				}
				w := row{
					Scenario:           sc,
					Batch:              batch,
					Consumers:          consumers,
					Baseline:           baseline(sc),
					Repeats:            len(rs),
					EntriesPerSec:      col(func(r runResult) float64 { return r.EntriesPerSec }),
					AllocsPerEntry:     col(func(r runResult) float64 { return r.AllocsPerEntry }),
					BytesPerEntry:      col(func(r runResult) float64 { return r.BytesPerEntry }),
					GoCPUPerEntryUS:    col(func(r runResult) float64 { return r.GoCPUPerEntryUS }),
					RedisCPUPerEntryUS: col(func(r runResult) float64 { return r.RedisCPUPerEntryUS }),
					Conflicts:          col(func(r runResult) float64 { return float64(r.Conflicts) }),
					Check:              "ok",
				}
				for _, r := range rs {
					w.PeakRSSMiB = max(w.PeakRSSMiB, r.PeakRSSMiB)
					if r.Check != "ok" && w.Check == "ok" {
						w.Check = fmt.Sprintf("repeat %d: %s", r.Repeat, r.Check)
					}
				}
				if sc == rawALO || sc == rawALOTopic {
					base[sc] = w.EntriesPerSec
				}
				rows = append(rows, w)
			}
			for i := range rows {
				if b := base[rows[i].Baseline]; rows[i].Batch == batch && rows[i].Consumers == consumers && b > 0 {
					rows[i].Ratio = rows[i].EntriesPerSec / b
				}
			}
		}
	}
	return rows
}

// thousands formats x rounded, with comma separators.
func thousands(x float64) string {
	s := strconv.FormatInt(int64(x+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func dur(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func printReport(w io.Writer, rep *report) {
	m := rep.Machine
	fmt.Fprintf(w, "## streamtx benchmark\n\n")
	fmt.Fprintf(w, "%s entries per run, %d repeat(s) interleaved; every number is the median of the repeats (peak RSS: the highest).\n",
		thousands(float64(m.Entries)), m.Repeats)
	fmt.Fprintf(w, "\"vs raw\" divides entries/s by the raw at-least-once loop's over the same streams (raw-alo; raw-alo-topic for the topic scenarios) at the same batch size and consumer count. CPU per entry: this process (Go, getrusage) and the Redis server (INFO cpu, all its clients), measured separately.\n\n")
	fmt.Fprintln(w, "| scenario | batch | consumers | entries/s | vs raw | allocs/entry | bytes/entry | Go CPU µs/entry | Redis CPU µs/entry | conflicts | peak RSS MiB | check |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
	for _, r := range rep.Rows {
		ratio := "–"
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		conflicts := "–"
		if !isRaw(r.Scenario) {
			conflicts = thousands(r.Conflicts)
		}
		rss := "–"
		if r.PeakRSSMiB > 0 {
			rss = fmt.Sprintf("%.1f", r.PeakRSSMiB)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %s | %s | %.1f | %s | %.1f | %.1f | %s | %s | %s |\n",
			r.Scenario, r.Batch, r.Consumers, thousands(r.EntriesPerSec), ratio,
			r.AllocsPerEntry, thousands(r.BytesPerEntry), r.GoCPUPerEntryUS, r.RedisCPUPerEntryUS,
			conflicts, rss, r.Check)
	}
	fmt.Fprintln(w)
	topics := false
	for _, sc := range allScenarios {
		fmt.Fprintf(w, "- `%s`: %s\n", sc, scenarioDesc[sc])
	}
	for _, r := range rep.Rows {
		topics = topics || isTopic(r.Scenario)
	}
	if topics {
		fmt.Fprintf(w, "\nTopic scenarios: %d partitions, -raw-topic %s, LeaseTTL %s, ", m.Partitions, m.RawTopic, m.LeaseTTL)
		if m.TopicStart == "cold" {
			fmt.Fprintf(w, "cold start (-topic-cold): the time includes the consumers joining and the first rebalance.\n")
		} else {
			fmt.Fprintf(w, "warm start: the consumers joined and their leases were balanced before the entries appeared (one MULTI/EXEC of RENAMEs) and the clock started.\n")
		}
	}

	if len(rep.Latency) > 0 {
		l0 := rep.Latency[0]
		fmt.Fprintf(w, "\n### Commit latency at batch 1 under light load\n\n")
		fmt.Fprintf(w, "One consumer, batch 1; a producer appends one entry every %v (%s entries per scenario). "+
			"Commit: the commit round trip (streamtx: Event.Duration of EventCommit, the script; raw-alo: the XADD+XACK pipeline). "+
			"End to end: from just before the producer's XADD to the commit's reply.\n\n",
			l0.IntervalNS, thousands(float64(l0.Entries)))
		fmt.Fprintln(w, "| scenario | commit p50 | commit p99 | commit max | end-to-end p50 | end-to-end p99 | end-to-end max | conflicts |")
		fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|")
		for _, l := range rep.Latency {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %d |\n", l.Scenario,
				dur(l.CommitP50), dur(l.CommitP99), dur(l.CommitMax), dur(l.E2EP50), dur(l.E2EP99), dur(l.E2EMax), l.Conflicts)
		}
	}
	printMachine(w, rep)
}

func printMachine(w io.Writer, rep *report) {
	m := rep.Machine
	fmt.Fprintf(w, "\n### Process and machine\n\n")
	fmt.Fprintf(w, "- peak RSS of the whole process (VmHWM): %.1f MiB\n", rep.PeakRSSMiB)
	fmt.Fprintf(w, "- %s %s/%s, NumCPU %d, GOMAXPROCS %d", m.GoVersion, m.OS, m.Arch, m.NumCPU, m.GOMAXPROCS)
	if m.CPUModel != "" {
		fmt.Fprintf(w, ", %s", m.CPUModel)
	}
	fmt.Fprintf(w, "\n- Redis %s at %s (same machine)\n", m.RedisVersion, m.RedisAddr)
	fmt.Fprintf(w, "- started %s", m.Date)
	if m.Elapsed != "" {
		fmt.Fprintf(w, ", took %s", m.Elapsed)
	}
	if m.LoadStart != "" {
		fmt.Fprintf(w, "; load average (1/5/15 min) %s at the start, %s at the end", m.LoadStart, m.LoadEnd)
	}
	fmt.Fprintln(w)
}
