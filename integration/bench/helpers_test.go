package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"
)

// patternBlock is the size of the random block a patternReader repeats.
const patternBlock = 1 << 20

// patternReader streams size bytes of deterministic pseudo-random content
// without holding them: it repeats one random block made from seed and
// stamps each repetition with its index, so no two MiB of a blob are alike.
// Reading costs a memcpy, which keeps the client's CPU out of the figures.
type patternReader struct {
	block []byte
	size  int64
	off   int64
}

// newPatternReader returns a reader of size bytes; equal seeds and sizes
// give equal content.
func newPatternReader(seed uint64, size int64) *patternReader {
	block := make([]byte, patternBlock)
	r := rand.New(rand.NewChaCha8([32]byte{0: byte(seed), 1: byte(seed >> 8), 2: byte(seed >> 16), 3: byte(seed >> 24)}))
	for i := 0; i < len(block); i += 8 {
		binary.LittleEndian.PutUint64(block[i:], r.Uint64())
	}
	return &patternReader{block: block, size: size}
}

// Read implements io.Reader.
func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.size-p.off)]
	n := 0
	for n < len(b) {
		idx := (p.off + int64(n)) / patternBlock
		pos := int((p.off + int64(n)) % patternBlock)
		c := copy(b[n:], p.block[pos:])
		// The first 8 bytes of each block are XORed with its index.
		for j := pos; j < 8 && j-pos < c; j++ {
			b[n+j-pos] ^= byte(uint64(idx) >> (8 * j))
		}
		n += c
	}
	p.off += int64(n)
	return n, nil
}

// Reset rewinds the reader to its first byte.
func (p *patternReader) Reset() { p.off = 0 }

// statusKiB returns the value in KiB of a field such as VmRSS or VmHWM from
// the text of /proc/<pid>/status.
func statusKiB(status, field string) (int64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: unexpected value %q", field, strings.TrimSpace(rest))
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("%s: not in status", field)
}

// mappedKiB returns the resident size in KiB (the Rss lines) of the
// mappings of files whose path ends in suffix, from the text of
// /proc/<pid>/smaps: how much of a mapped file, such as the ledger bbolt
// maps, counts in a process's RSS.
func mappedKiB(smaps, suffix string) (int64, error) {
	var total int64
	in := false
	for line := range strings.Lines(smaps) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasSuffix(f[0], ":") { // a mapping's header: address range, perms, offset, dev, inode, path
			in = len(f) >= 6 && strings.HasSuffix(f[len(f)-1], suffix)
			continue
		}
		if !in || f[0] != "Rss:" {
			continue
		}
		if len(f) != 3 || f[2] != "kB" {
			return 0, fmt.Errorf("smaps: unexpected Rss line %q", strings.TrimSpace(line))
		}
		n, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("smaps: %w", err)
		}
		total += n
	}
	return total, nil
}

// histogramMean returns the mean of a Prometheus histogram series, its
// _sum divided by its _count, from the text exposition format; labels are
// the series' labels as they appear, such as `op="commit"`. It returns
// false when the series is missing or empty.
func histogramMean(text, metric string, labels ...string) (float64, bool) {
	value := func(suffix string) (float64, bool) {
	lines:
		for line := range strings.Lines(text) {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), "{")
			if !ok || name != metric+suffix {
				continue
			}
			set, v, ok := strings.Cut(rest, "} ")
			if !ok {
				continue
			}
			have := strings.Split(set, ",")
			for _, l := range labels {
				if !slices.Contains(have, l) {
					continue lines
				}
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
		return 0, false
	}
	sum, ok1 := value("_sum")
	count, ok2 := value("_count")
	if !ok1 || !ok2 || count == 0 {
		return 0, false
	}
	return sum / count, true
}

// median returns the median of xs, which must not be empty.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// quotients returns xs[i]/ys[i] for each i; the slices are one value per
// iteration, of equal length.
func quotients(xs, ys []float64) []float64 {
	q := make([]float64, len(xs))
	for i := range xs {
		q[i] = xs[i] / ys[i]
	}
	return q
}

// percentile returns the p-quantile of xs (0 < p <= 1) by the
// nearest-rank method: the smallest value at least a fraction p of xs do
// not exceed. xs must not be empty; it is left as it is.
func percentile(xs []time.Duration, p float64) time.Duration {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// cpuTicks returns utime+stime, in clock ticks (USER_HZ, 100 a second), from
// the text of /proc/<pid>/stat: the CPU time of all the process's threads.
func cpuTicks(stat string) (int64, error) {
	// The command name, field 2, is in parentheses and may contain
	// spaces; fields are counted after its closing parenthesis.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no command name in %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the command name, want at least 13", len(f))
	}
	var total int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat: %w", err)
		}
		total += n
	}
	return total, nil
}

// machineTicks returns the busy and idle time of the whole machine, in clock
// ticks summed over every CPU, from the aggregate "cpu" line of /proc/stat.
// Busy is user, nice, system, irq, softirq and steal: it includes the kernel's
// packet processing, which no process is charged for. Idle is idle and
// iowait. Guest time is already inside user and is not counted twice.
func machineTicks(stat string) (busy, idle int64, err error) {
	line, _, _ := strings.Cut(stat, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: first line %q is not the aggregate cpu line", line)
	}
	for i, s := range f[1:9] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %w", err)
		}
		switch i {
		case 3, 4: // idle, iowait
			idle += n
		default: // user, nice, system, irq, softirq, steal
			busy += n
		}
	}
	return busy, idle, nil
}
