package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/taglock/taglock/internal/server"
	"github.com/taglock/taglock/policy"
	"github.com/taglock/taglock/storage"
	"github.com/taglock/taglock/storage/bolt"
)

var updatePin = flag.Bool("update", false, "rewrite the golden files under testdata/pin")

// pinLedger is the ledger the golden files are pinned against: every tag
// immutable except team/web:latest.
var pinLedger = map[string]digest.Digest{
	"team/web:1.4.2":         digest.FromString("team/web:1.4.2"),
	"team/web:latest":        digest.FromString("team/web:latest"),
	"team/exporter:0.9.0":    digest.FromString("team/exporter:0.9.0"),
	"team/report:2026.11.1":  digest.FromString("team/report:2026.11.1"),
	"team/api:3.1.0":         digest.FromString("team/api:3.1.0"),
	"team/cache:7.2.4":       digest.FromString("foo"),
	"team/checkout:5.0.0":    digest.FromString("team/checkout:5.0.0"),
	"team/cart:5.0.0":        digest.FromString("team/cart:5.0.0"),
	"team/migrate:1.0.3":     digest.FromString("team/migrate:1.0.3"),
	"tools/debug:0.2.0":      digest.FromString("tools/debug:0.2.0"),
	"team/worker:1.4.2":      digest.FromString("team/worker:1.4.2"),
	"team/report:2026.10.30": digest.FromString("deleted"),
}

// newPinEnv writes a ledger holding pinLedger (team/report:2026.10.30 as a
// tombstone) and a config whose listen address nothing answers on.
func newPinEnv(t *testing.T) *ltEnv {
	t.Helper()
	dir := t.TempDir()
	e := &ltEnv{data: filepath.Join(dir, "data"), conf: filepath.Join(dir, "taglock.yaml")}
	if err := os.WriteFile(e.conf, []byte("listen: 127.0.0.1:1\ndata: "+e.data+"\nlog: {level: error}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.data, 0o750); err != nil {
		t.Fatal(err)
	}
	l, err := bolt.Open(server.LedgerPath(e.data), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	var bs []storage.Binding
	for ref, d := range pinLedger {
		repo, tag, _ := strings.Cut(ref, ":")
		b := storage.Binding{Repo: repo, Tag: tag, Digest: d, Size: 500, Mode: policy.Immutable, PushedAt: at, PushedBy: "ci"}
		if tag == "latest" {
			b.Mode = policy.Mutable
		}
		if tag == "2026.10.30" {
			b.Deleted, b.DeletedAt = true, at.Add(time.Hour)
		}
		bs = append(bs, b)
	}
	if err := l.Put(context.Background(), bs, nil); err != nil {
		t.Fatal(err)
	}
	return e
}

// copyPinInput copies testdata/pin/NAME into a temporary directory.
func copyPinInput(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "pin", name))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func readString(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPinGolden ensures that pin rewrites each realistic manifest exactly as
// its golden file shows (only the image values change; comments, quoting and
// layout stay), that a second run changes nothing, that --check passes on
// the result unless a mutable tag remains, and that --check on the input
// fails and writes nothing.
func TestPinGolden(t *testing.T) {
	t.Parallel()
	e := newPinEnv(t)
	tests := []struct {
		name       string
		checkAfter int // --check exit code on the pinned file
	}{
		{"deployment.yaml", 0},
		{"cronjob.yaml", 0},
		{"multi.yaml", 0},
		{"comments.yaml", 0},
		{"initcontainers.yaml", 0},
		{"compose.yaml", 0},
		{"operator.yaml", 0},
		{"mutable.yaml", exitFailure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := copyPinInput(t, tc.name)
			input := readString(t, f)
			if _, errs, code := e.run(t, "pin", "--check", "--host", "registry.example.com", f); code != exitFailure {
				t.Errorf("--check on the unpinned input: exit %d, want 1 (%s)", code, errs)
			}
			if readString(t, f) != input {
				t.Fatal("--check wrote the file")
			}
			out := e.mustRun(t, 0, "pin", "--host", "registry.example.com", f)
			got := readString(t, f)
			golden := filepath.Join("testdata", "pin", strings.TrimSuffix(tc.name, ".yaml")+".golden")
			if *updatePin {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if want := readString(t, golden); got != want {
				t.Errorf("pinned %s differs from %s:\n%s\nstdout:\n%s", tc.name, golden, got, out)
			}
			if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o640 {
				t.Errorf("pin changed the file mode: %v %v", st.Mode(), err)
			}
			if out := e.mustRun(t, 0, "pin", "--host", "registry.example.com", f); readString(t, f) != got || !strings.Contains(out, "0 references pinned") {
				t.Errorf("a second pin changed the file or reported changes:\n%s", out)
			}
			out, errs, code := e.run(t, "pin", "--check", "--host", "registry.example.com", f)
			if code != tc.checkAfter {
				t.Errorf("--check on the pinned file: exit %d, want %d\n%s%s", code, tc.checkAfter, out, errs)
			}
		})
	}
}

// TestPinGoldenFilesOnlyChangeImages ensures the golden files themselves
// differ from their inputs only inside image values, so a wrong golden file
// cannot hide a formatting change.
func TestPinGoldenFilesOnlyChangeImages(t *testing.T) {
	t.Parallel()
	inputs, err := filepath.Glob(filepath.Join("testdata", "pin", "*.yaml"))
	if err != nil || len(inputs) < 6 {
		t.Fatalf("inputs: %v %v", inputs, err)
	}
	for _, in := range inputs {
		a := strings.Split(readString(t, in), "\n")
		b := strings.Split(readString(t, strings.TrimSuffix(in, ".yaml")+".golden"), "\n")
		if len(a) != len(b) {
			t.Errorf("%s: golden has %d lines, input %d", in, len(b), len(a))
			continue
		}
		for i := range a {
			if a[i] == b[i] {
				continue
			}
			// The only change allowed: @sha256:<64 hex> after the tag.
			j := strings.Index(b[i], "@sha256:")
			if j < 0 || len(b[i]) < j+8+64 || a[i] != b[i][:j]+b[i][j+8+64:] {
				t.Errorf("%s:%d: golden line changes more than an added digest:\n  %s\n  %s", in, i+1, a[i], b[i])
			}
		}
	}
}

// TestPinCheckExitCodes ensures --check exits 0 only when every reference to
// the host is pinned to an immutable tag, 1 otherwise, and 2 on usage
// errors, and that references to other registries are ignored.
func TestPinCheckExitCodes(t *testing.T) {
	t.Parallel()
	e := newPinEnv(t)
	web := pinLedger["team/web:1.4.2"]
	tests := []struct {
		name, image string
		want        int
		status      string
	}{
		{"pinned immutable", "registry.example.com/team/web:1.4.2@" + web.String(), 0, ""},
		{"digest only", "registry.example.com/team/web@" + web.String(), 0, ""},
		{"other registry", "docker.io/library/nginx:latest", 0, ""},
		{"docker hub short", "nginx", 0, ""},
		{"not pinned", "registry.example.com/team/web:1.4.2", 1, pinUnpinned},
		{"latest", "registry.example.com/team/web:latest", 1, pinMutable},
		{"latest pinned", "registry.example.com/team/web:latest@" + pinLedger["team/web:latest"].String(), 1, pinMutable},
		{"no tag", "registry.example.com/team/web", 1, pinMutable},
		{"wrong digest", "registry.example.com/team/web:1.4.2@" + digest.FromString("other").String(), 1, pinConflict},
		{"deleted tag", "registry.example.com/team/report:2026.10.30", 1, pinFailed},
		{"unknown tag, no server", "registry.example.com/team/web:9.9.9", 1, pinFailed},
		{"host case", "REGISTRY.example.com/team/web:1.4.2@" + web.String(), 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "pod.yaml")
			src := "spec:\n  containers:\n    - image: " + tc.image + "\n"
			if err := os.WriteFile(f, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			out, errs, code := e.run(t, "pin", "--check", "--host", "registry.example.com", "-o", "json", f)
			if code != tc.want {
				t.Errorf("exit %d, want %d\n%s%s", code, tc.want, out, errs)
			}
			var refs []pinRef
			mustJSON(t, out, &refs)
			if tc.status != "" && (len(refs) != 1 || refs[0].Status != tc.status) {
				t.Errorf("references %+v, want one with status %s", refs, tc.status)
			}
			if readString(t, f) != src {
				t.Error("--check wrote the file")
			}
		})
	}
	for _, args := range [][]string{{"pin"}, {"pin", "-o", "yaml", "x.yaml"}} {
		if _, errs, code := e.run(t, args...); code != exitUsage {
			t.Errorf("taglock %v: exit %d, want 2 (%s)", args, code, errs)
		}
	}
	if _, errs, code := e.run(t, "pin", filepath.Join(t.TempDir(), "missing.yaml")); code != exitFailure || !strings.Contains(errs, "missing.yaml") {
		t.Errorf("missing file: exit %d, %s", code, errs)
	}
}

// TestPinWritesNothingOnFailure ensures that when any reference in any file
// cannot be pinned (an unknown tag, a digest that contradicts the ledger), no
// file is written, and the failure names the line.
func TestPinWritesNothingOnFailure(t *testing.T) {
	t.Parallel()
	e := newPinEnv(t)
	good := copyPinInput(t, "deployment.yaml")
	before := readString(t, good)
	for _, image := range []string{
		"registry.example.com/team/web:9.9.9",
		"registry.example.com/team/web:1.4.2@" + digest.FromString("other").String(),
	} {
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(bad, []byte("# bad\nimage: "+image+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, errs, code := e.run(t, "pin", "--host", "registry.example.com", good, bad)
		if code != exitFailure || !strings.Contains(out, bad+":2: ") || !strings.Contains(errs, "no file was written") {
			t.Errorf("pin with %s: exit %d\nstdout: %s\nstderr: %s", image, code, out, errs)
		}
		if readString(t, good) != before {
			t.Errorf("pin with %s wrote the good file", image)
		}
	}
}

// TestPinThroughServe ensures that with serve running pin reads the ledger
// through its API, uses the listen address as the default host, and resolves
// a tag the ledger has never seen through taglock from the upstream.
func TestPinThroughServe(t *testing.T) {
	t.Parallel()
	e := ltNewEnv(t)
	v1 := e.up.put(t, "team/app", "1.0", "one")
	e.mustRun(t, 0, "import")
	e.serve(t)
	defer e.stop(t)
	v2 := e.up.put(t, "team/app", "2.0", "two") // written around taglock: not in the ledger
	host := e.srv.Addr()
	f := filepath.Join(t.TempDir(), "compose.yaml")
	src := fmt.Sprintf("services:\n  a: {image: %s/team/app:1.0}\n  b:\n    image: %s/team/app:2.0 # new\n  c:\n    image: other.example/team/app:1.0\n", host, host)
	if err := os.WriteFile(f, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	var refs []pinRef
	mustJSON(t, e.mustRun(t, 0, "pin", "-o", "json", f), &refs)
	if len(refs) != 2 || refs[0].Source != "ledger" || refs[1].Source != "upstream" {
		t.Errorf("references = %+v, want the ledger's 1.0 and the upstream's 2.0", refs)
	}
	want := fmt.Sprintf("services:\n  a: {image: %s/team/app:1.0@%s}\n  b:\n    image: %s/team/app:2.0@%s # new\n  c:\n    image: other.example/team/app:1.0\n", host, v1, host, v2)
	if got := readString(t, f); got != want {
		t.Errorf("pinned file:\n%s\nwant:\n%s", got, want)
	}
	e.mustRun(t, 0, "pin", "--check", f)
}

// TestPinEditsInPlace ensures the rewrite touches only the value's bytes in
// spellings a YAML emitter may produce: CRLF line endings, non-ASCII text
// before the value on its line, flow mappings, and a value that cannot be
// placed exactly (a block scalar) is reported rather than guessed.
func TestPinEditsInPlace(t *testing.T) {
	t.Parallel()
	const d = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	tests := []struct {
		name, src, want string
		err             bool
	}{
		{"crlf", "a: 1\r\nimage: r.example/x:1\r\nb: 2\r\n", "a: 1\r\nimage: r.example/x:1@" + d + "\r\nb: 2\r\n", false},
		{"unicode before", "{note: \"héllo wörld\", image: r.example/x:1}\n", "{note: \"héllo wörld\", image: r.example/x:1@" + d + "}\n", false},
		{"tagged", "image: !!str r.example/x:1\n", "image: !!str r.example/x:1@" + d + "\n", false},
		{"block scalar", "image: |\n  r.example/x:1\n", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sites, err := findImages([]byte(tc.src))
			if err != nil || len(sites) != 1 {
				t.Fatalf("sites %+v, %v", sites, err)
			}
			if tc.err {
				if sites[0].err == nil {
					t.Error("no error for a value that cannot be placed")
				}
				return
			}
			if sites[0].err != nil {
				t.Fatal(sites[0].err)
			}
			got := string(applyEdits([]byte(tc.src), []edit{{site: sites[0], with: sites[0].Value + "@" + d}}))
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
