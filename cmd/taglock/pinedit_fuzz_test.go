package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"go.yaml.in/yaml/v3"
)

// FuzzPinRewrite ensures that pin's YAML rewriter never panics, and that
// when it rewrites a file that parses as YAML, pinning every image
// reference it found as pin does (TAG becomes TAG@DIGEST), the result still
// parses as YAML and differs from the input only in those image values:
// every other node keeps its kind, tag, style, anchor and value.
func FuzzPinRewrite(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "pin", "*.yaml"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seed files under testdata/pin (%v)", err)
	}
	for _, name := range seeds {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		"image: a/b:v1\n",
		"image: 'host:5000/a/b:v1'\r\nimage2: x\r\n",
		"- {image: a:1, name: x}\n- image: \"a:1\"\n",
		"a: &x\n  image: !!str a/b:1 # c\nb: *x\n",
		"image: a:1\n---\nimage: b:2\n...\n",
		"image: >\n  a:1\n",
		"image: \"a\\u003a1\"\n",
		"\ufeffimage: é/a:1\n",
		"image: a:1\t# tab\n",
		"k: [image, {image: a:1}]\n",
	} {
		f.Add([]byte(s))
	}
	pin := digest.FromString("pinned")
	f.Fuzz(func(t *testing.T, src []byte) {
		sites, err := findImages(src)
		if err != nil {
			return // pin refuses a file that is not YAML
		}
		want := map[[2]int]string{} // line, column -> the value pin writes
		var edits []edit
		for _, s := range sites {
			ref, err := parseImageRef(s.Value)
			if s.err != nil || err != nil {
				continue
			}
			if string(src[s.start:s.end]) != s.Value {
				t.Fatalf("site at %d:%d covers %q, not its value %q", s.Line, s.Column, src[s.start:s.end], s.Value)
			}
			ref.Digest = pin
			edits = append(edits, edit{site: s, with: ref.String()})
			want[[2]int{s.Line, s.Column}] = ref.String()
		}
		for i := 1; i < len(edits); i++ {
			if edits[i].site.start < edits[i-1].site.end {
				t.Fatalf("sites overlap or are out of order: %d:%d then %d:%d", edits[i-1].site.Line, edits[i-1].site.Column,
					edits[i].site.Line, edits[i].site.Column)
			}
		}
		out := applyEdits(src, edits)

		before, err := decodeDocs(src)
		if err != nil {
			t.Fatalf("findImages parsed the input but decoding it again failed: %v", err)
		}
		after, err := decodeDocs(out)
		if err != nil {
			t.Fatalf("the rewritten file does not parse: %v\ninput:\n%s\noutput:\n%s", err, src, out)
		}
		if len(before) != len(after) {
			t.Fatalf("%d documents became %d\ninput:\n%s\noutput:\n%s", len(before), len(after), src, out)
		}
		for i := range before {
			pinned := map[*yaml.Node]string{}
			markImages(before[i], want, pinned)
			if err := sameTree(before[i], after[i], pinned); err != nil {
				t.Fatalf("document %d: %v\ninput:\n%s\noutput:\n%s", i+1, err, src, out)
			}
		}
	})
}

// decodeDocs decodes every YAML document of src.
func decodeDocs(src []byte) ([]*yaml.Node, error) {
	var docs []*yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(src))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		docs = append(docs, &doc)
	}
}

// markImages finds, like findImages, the image values of n that were
// rewritten and records the value each must have now.
func markImages(n *yaml.Node, want map[[2]int]string, pinned map[*yaml.Node]string) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if w, ok := want[[2]int{v.Line, v.Column}]; ok && k.Value == "image" && v.Kind == yaml.ScalarNode {
				pinned[v] = w
			}
		}
	}
	for _, c := range n.Content {
		markImages(c, want, pinned)
	}
}

// sameTree compares a and b node by node; a node in pinned must have the
// pinned value in b instead of its own.
func sameTree(a, b *yaml.Node, pinned map[*yaml.Node]string) error {
	value := a.Value
	if w, ok := pinned[a]; ok {
		value = w
	}
	switch {
	case a.Kind != b.Kind:
		return errorf(a, "kind %v became %v", a.Kind, b.Kind)
	case a.ShortTag() != b.ShortTag():
		return errorf(a, "tag %s became %s", a.ShortTag(), b.ShortTag())
	case a.Style != b.Style:
		return errorf(a, "style %v became %v", a.Style, b.Style)
	case a.Anchor != b.Anchor:
		return errorf(a, "anchor %q became %q", a.Anchor, b.Anchor)
	case value != b.Value:
		return errorf(a, "value %q became %q, want %q", a.Value, b.Value, value)
	case len(a.Content) != len(b.Content):
		return errorf(a, "%d children became %d", len(a.Content), len(b.Content))
	case (a.Alias == nil) != (b.Alias == nil):
		return errorf(a, "alias changed")
	case a.Alias != nil && a.Alias.Anchor != b.Alias.Anchor:
		return errorf(a, "alias of %q became an alias of %q", a.Alias.Anchor, b.Alias.Anchor)
	}
	for i := range a.Content {
		if err := sameTree(a.Content[i], b.Content[i], pinned); err != nil {
			return err
		}
	}
	return nil
}

// errorf is an error about the node at n's position in the input.
func errorf(n *yaml.Node, format string, args ...any) error {
	return fmt.Errorf("line %d column %d: %s", n.Line, n.Column, fmt.Sprintf(format, args...))
}
