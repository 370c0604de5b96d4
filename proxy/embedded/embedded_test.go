package embedded

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/rs/zerolog"
	"github.com/sirupsen/logrus"
)

// Distribution's request logging goes to debug whatever level it used;
// answers of 500 and above and errors about anything else stay errors.
func TestLevel(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		level logrus.Level
		msg   string
		data  logrus.Fields
		want  zerolog.Level
	}{
		{"404 answer", logrus.ErrorLevel, "response completed with error", logrus.Fields{"http.response.status": 404, "err.code": "blob unknown"}, zerolog.DebugLevel},
		{"client went away", logrus.ErrorLevel, "client disconnected during blob PATCH", nil, zerolog.DebugLevel},
		{"500 answer", logrus.ErrorLevel, "response completed with error", logrus.Fields{"http.response.status": 500}, zerolog.ErrorLevel},
		{"storage error", logrus.ErrorLevel, "unknown error reading request payload: i/o error", nil, zerolog.ErrorLevel},
		{"no status yet", logrus.ErrorLevel, "error resolving upload", logrus.Fields{"http.response.status": 0}, zerolog.ErrorLevel},
		{"warning", logrus.WarnLevel, "blob path should not be a directory", nil, zerolog.WarnLevel},
		{"request completed", logrus.InfoLevel, "response completed", logrus.Fields{"http.response.status": 200}, zerolog.DebugLevel},
	} {
		e := &logrus.Entry{Level: tt.level, Message: tt.msg, Data: tt.data}
		if got := level(e); got != tt.want {
			t.Errorf("%s: level %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestStorageSectionIsPassedToDistribution ensures that a storage driver
// section given in Options reaches Distribution's configuration as it is,
// next to the settings taglock needs (deletes on, redirects off), that the
// default is filesystem storage under Root, and that an unknown driver or
// two drivers are refused.
func TestStorageSectionIsPassedToDistribution(t *testing.T) {
	t.Parallel()
	doc, err := configYAML(Options{Root: "/r", Storage: map[string]map[string]any{"s3": {"region": "eu-west-1", "bucket": "b"}}}, "secret")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configuration.Parse(bytes.NewReader(doc))
	if err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	if cfg.Storage.Type() != "s3" || cfg.Storage.Parameters()["bucket"] != "b" || cfg.Storage["delete"]["enabled"] != true ||
		cfg.Storage["redirect"]["disable"] != true {
		t.Errorf("storage = %+v", cfg.Storage)
	}
	doc, _ = configYAML(Options{Root: "/r"}, "secret")
	if cfg, err := configuration.Parse(bytes.NewReader(doc)); err != nil || cfg.Storage.Type() != "filesystem" ||
		cfg.Storage.Parameters()["rootdirectory"] != "/r/data" {
		t.Errorf("default storage = %+v, %v", cfg.Storage, err)
	}
	for _, bad := range []map[string]map[string]any{{"inmemory": nil}, {"s3": nil, "azure": nil}} {
		if _, err := configYAML(Options{Root: "/r", Storage: bad}, "secret"); err == nil {
			t.Errorf("storage %v accepted", bad)
		}
	}
}

// TestGCSNeedsItsBuildTag ensures gcs is accepted exactly in a build with
// the gcs tag, and that a build without it says how to get one.
func TestGCSNeedsItsBuildTag(t *testing.T) {
	t.Parallel()
	_, err := configYAML(Options{Root: "/r", Storage: map[string]map[string]any{"gcs": {"bucket": "b"}}}, "secret")
	switch slices.Contains(Drivers, "gcs") {
	case true:
		if err != nil {
			t.Errorf("gcs in a build with the gcs tag: %v", err)
		}
	default:
		if err == nil || !strings.Contains(err.Error(), "-tags gcs") {
			t.Errorf("gcs in a build without the gcs tag: %v; want an error naming -tags gcs", err)
		}
	}
}
