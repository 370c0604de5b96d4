package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func fixture(t *testing.T) results {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rs results
	if err := json.Unmarshal(b, &rs); err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestOperations ensures results are grouped by benchmark in run order,
// that repeated runs give the median of their ratios, that results
// without ratios are left out, and that a missing path counts as 0.
func TestOperations(t *testing.T) {
	t.Parallel()
	ops := operations(fixture(t))
	var labels []string
	for _, op := range ops {
		labels = append(labels, op.label)
	}
	want := []string{"blob upload 256 MiB", "manifest GET, immutable tag, 32 clients", "SomethingNew"}
	if strings.Join(labels, "|") != strings.Join(want, "|") {
		t.Fatalf("operations %q, want %q", labels, want)
	}
	if got := ops[1].ratios; got[0] != 2.10 || got[1] != 0.82 || got[2] != 0.88 {
		t.Errorf("medians over three runs = %v, want [2.1 0.82 0.88] (taglock, control, nginx)", got)
	}
	if got := ops[2].ratios; got[0] != 0.5 || got[1] != 0 || got[2] != 0 {
		t.Errorf("a result with only taglock's ratio = %v, want [0.5 0 0]", got)
	}
}

// TestRender ensures the chart is a well-formed SVG document that names
// every operation, every series and the 1.0 line, and shows the values.
func TestRender(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	if err := render(fixture(t), &buf); err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(buf.Bytes()))
	var root string
	var text strings.Builder
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed XML: %v", err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
		case xml.CharData:
			text.Write(tok)
		}
	}
	if root != "svg" {
		t.Fatalf("root element %q, want svg", root)
	}
	for _, want := range []string{"blob upload 256 MiB", "manifest GET, immutable tag, 32 clients", "SomethingNew",
		"taglock", "bare proxy (control)", "nginx", "direct = 1.0", "2.10×", "0.95×", "2026-11-27, commit abc1234"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the chart's text lacks %q", want)
		}
	}
}

// TestRenderNothing ensures a run without ratios is an error, not an empty
// chart.
func TestRenderNothing(t *testing.T) {
	t.Parallel()
	rs := results{Results: []result{{Name: "BenchmarkMemory1GiB/upstream"}}}
	if err := render(rs, io.Discard); err == nil {
		t.Error("render of results without ratios: no error")
	}
}

// TestRun ensures the command reads the JSON and writes the SVG file, and
// leaves no file behind when it fails.
func TestRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out := filepath.Join(dir, "chart.svg")
	if err := run(filepath.Join("testdata", "bench.json"), out); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || !bytes.Contains(b, []byte("<svg")) {
		t.Fatalf("chart file: %v, %.40q", err, b)
	}
	empty := filepath.Join(dir, "empty.json")
	if err := os.WriteFile(empty, []byte(`{"results":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.svg")
	if err := run(empty, bad); err == nil {
		t.Error("run with no results: no error")
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a failed run left %s behind", bad)
	}
}

// TestPlotStaysOutOfTaglock ensures the plotting library this command
// brings into go.mod is not linked into the taglock binary.
func TestPlotStaysOutOfTaglock(t *testing.T) {
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "../../cmd/taglock").Output()
	if err != nil {
		t.Fatalf("go list -deps ../../cmd/taglock: %v", err)
	}
	if !strings.Contains(string(out), "github.com/taglock/taglock/proxy\n") {
		t.Fatalf("go list -deps ../../cmd/taglock does not list taglock's own packages:\n%.500s", out)
	}
	for line := range strings.Lines(string(out)) {
		if strings.HasPrefix(line, "gonum.org/") {
			t.Errorf("taglock's binary depends on %s", strings.TrimSpace(line))
		}
	}
}
