package bench

import (
	"bytes"
	"crypto/sha256"
	"io"
	"testing"
	"time"
)

// TestPatternReader ensures the benchmark's blob source yields exactly the
// requested length, the same bytes for the same seed whatever the read
// sizes, and different bytes for another seed or another block.
func TestPatternReader(t *testing.T) {
	t.Parallel()
	const size = 3*patternBlock + 12345
	whole, err := io.ReadAll(newPatternReader(7, size))
	if err != nil {
		t.Fatal(err)
	}
	if len(whole) != size {
		t.Fatalf("read %d bytes, want %d", len(whole), size)
	}
	for _, chunk := range []int{1, 5, 8, 4096, patternBlock - 3, 2 * patternBlock} {
		r := newPatternReader(7, size)
		var got bytes.Buffer
		buf := make([]byte, chunk)
		if _, err := io.CopyBuffer(&got, struct{ io.Reader }{r}, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), whole) {
			t.Errorf("reads of %d bytes gave different content", chunk)
		}
		r.Reset()
		again, _ := io.ReadAll(r)
		if !bytes.Equal(again, whole) {
			t.Errorf("after Reset (chunk %d): different content", chunk)
		}
	}
	if bytes.Equal(whole[:patternBlock], whole[patternBlock:2*patternBlock]) {
		t.Error("block 0 and block 1 are equal; want each block stamped")
	}
	other, _ := io.ReadAll(newPatternReader(8, size))
	if sha256.Sum256(other) == sha256.Sum256(whole) {
		t.Error("seeds 7 and 8 gave the same content")
	}
}

// TestStatusKiB ensures RSS figures are read from /proc/<pid>/status and a
// missing or malformed field is an error rather than zero.
func TestStatusKiB(t *testing.T) {
	t.Parallel()
	const status = "Name:\ttaglock\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n"
	tests := []struct {
		field   string
		want    int64
		wantErr bool
	}{
		{"VmRSS", 40960, false},
		{"VmHWM", 51234, false},
		{"VmSwap", 0, true},
		{"Threads", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.field, func(t *testing.T) {
			got, err := statusKiB(status, tc.field)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("statusKiB(%s) = %d, %v; want %d, error %v", tc.field, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestMedian ensures the reported figure is the median for odd and even
// counts and does not reorder the caller's slice.
func TestMedian(t *testing.T) {
	t.Parallel()
	xs := []float64{3, 1, 2}
	if got := median(xs); got != 2 {
		t.Errorf("median(3,1,2) = %v, want 2", got)
	}
	if xs[0] != 3 {
		t.Error("median reordered its argument")
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median(4,1,3,2) = %v, want 2.5", got)
	}
}

// TestCPUTicks ensures a process's CPU time is read from the right fields of
// /proc/<pid>/stat, even when its command name contains spaces and
// parentheses, and that a truncated line is an error.
func TestCPUTicks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		stat    string
		want    int64
		wantErr bool
	}{
		{"plain", "4242 (taglock) S 1 4242 4242 0 -1 4194560 1543 0 0 0 120 35 0 0 20 0 9 0 12345 1234567 6000 18446744073709551615", 155, false},
		{"odd name", "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1 1", 7, false},
		{"truncated", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 3", 0, true},
		{"garbage", "no parenthesis", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cpuTicks(tc.stat)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("cpuTicks = %d, %v; want %d, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestMachineTicks ensures the whole machine's busy time counts user, nice,
// system, irq, softirq and steal, its idle time counts idle and iowait, and
// a /proc/stat that does not start with the aggregate line is an error.
func TestMachineTicks(t *testing.T) {
	t.Parallel()
	const stat = "cpu  100 2 30 4000 5 6 70 8 9 10\ncpu0 50 1 15 2000 2 3 35 4 4 5\n"
	busy, idle, err := machineTicks(stat)
	if err != nil || busy != 100+2+30+6+70+8 || idle != 4000+5 {
		t.Errorf("machineTicks = %d, %d, %v; want 216, 4005, nil", busy, idle, err)
	}
	for _, bad := range []string{"cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n", ""} {
		if _, _, err := machineTicks(bad); err == nil {
			t.Errorf("machineTicks(%q): no error", bad)
		}
	}
}

// TestMappedKiB ensures only the mappings of the named file count, with all
// their resident pages, and a malformed Rss line is an error.
func TestMappedKiB(t *testing.T) {
	t.Parallel()
	const smaps = `00400000-01c00000 r-xp 00000000 fd:01 131 /usr/local/bin/taglock
Size:              24576 kB
Rss:               14000 kB
7f0000000000-7f0004000000 r--s 00000000 fd:01 262 /tmp/x/data/ledger.db
Size:              65536 kB
Rss:               41000 kB
Pss:               41000 kB
7f0004000000-7f0004100000 rw-p 00000000 00:00 0
Rss:                 512 kB
7f0005000000-7f0005001000 r--s 04000000 fd:01 262 /tmp/x/data/ledger.db
Rss:                   4 kB
`
	got, err := mappedKiB(smaps, "/ledger.db")
	if err != nil || got != 41004 {
		t.Errorf("mappedKiB(ledger.db) = %d, %v; want 41004", got, err)
	}
	if got, err := mappedKiB(smaps, "/nothing"); err != nil || got != 0 {
		t.Errorf("mappedKiB(nothing) = %d, %v; want 0", got, err)
	}
	if _, err := mappedKiB("7f-8f r--s 0 fd:01 262 /d/ledger.db\nRss: many kB\n", "/ledger.db"); err == nil {
		t.Error("malformed Rss line: no error")
	}
}

// TestHistogramMean ensures a series is picked by its name and all the
// labels asked for, whatever the order of its labels, and that a missing
// or empty series is reported as such.
func TestHistogramMean(t *testing.T) {
	t.Parallel()
	const text = `# HELP taglock_ledger_duration_seconds Ledger operations.
# TYPE taglock_ledger_duration_seconds histogram
taglock_ledger_duration_seconds_bucket{op="commit",le="0.0001"} 0
taglock_ledger_duration_seconds_sum{op="commit"} 0.5
taglock_ledger_duration_seconds_count{op="commit"} 200
taglock_ledger_duration_seconds_sum{op="reserve"} 0.3
taglock_ledger_duration_seconds_count{op="reserve"} 100
taglock_ledger_duration_seconds_sum{op="release"} 0
taglock_ledger_duration_seconds_count{op="release"} 0
taglock_upstream_duration_seconds_sum{method="GET",op="lookup"} 1.5
taglock_upstream_duration_seconds_count{method="GET",op="lookup"} 300
`
	tests := []struct {
		metric string
		labels []string
		want   float64
		ok     bool
	}{
		{"taglock_ledger_duration_seconds", []string{`op="commit"`}, 0.0025, true},
		{"taglock_ledger_duration_seconds", []string{`op="reserve"`}, 0.003, true},
		{"taglock_upstream_duration_seconds", []string{`op="lookup"`, `method="GET"`}, 0.005, true},
		{"taglock_upstream_duration_seconds", []string{`op="lookup"`, `method="PUT"`}, 0, false},
		{"taglock_ledger_duration_seconds", []string{`op="release"`}, 0, false},
		{"taglock_ledger", []string{`op="commit"`}, 0, false},
	}
	for _, tc := range tests {
		got, ok := histogramMean(text, tc.metric, tc.labels...)
		if ok != tc.ok || got != tc.want {
			t.Errorf("histogramMean(%s, %v) = %v, %v; want %v, %v", tc.metric, tc.labels, got, ok, tc.want, tc.ok)
		}
	}
}

// TestPercentile ensures percentiles follow the nearest-rank method: p50 of
// 1..100 is 50, p99 is 99, p100 the largest, whatever the input order, and
// a single value is every percentile.
func TestPercentile(t *testing.T) {
	t.Parallel()
	xs := make([]time.Duration, 100)
	for i := range xs {
		xs[i] = time.Duration(100 - i)
	}
	tests := []struct {
		p    float64
		want time.Duration
	}{
		{0.5, 50}, {0.99, 99}, {1, 100}, {0.001, 1},
	}
	for _, tc := range tests {
		if got := percentile(xs, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %d, want %d", tc.p, got, tc.want)
		}
	}
	if xs[0] != 100 {
		t.Error("percentile sorted its input")
	}
	if got := percentile([]time.Duration{7}, 0.99); got != 7 {
		t.Errorf("percentile of one value = %d, want 7", got)
	}
}
