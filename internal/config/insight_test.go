package config

import (
	"strings"
	"testing"
)

// TestVerifyScheduleAndAuditFile ensures verify.schedule and log.audit load,
// and that a schedule below one second is refused with its line, so serve
// cannot be told to hammer the upstream.
func TestVerifyScheduleAndAuditFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		yaml, err string
	}{
		{"verify:\n  schedule: 6h\nlog:\n  audit: /var/log/taglock/audit.jsonl\n", ""},
		{"verify:\n  schedule: 0\n", ""},
		{"verify:\n  schedule: 500ms\n", "t.yaml:2: verify.schedule: want 0 (never) or at least 1s"},
	}
	for _, tc := range tests {
		t.Run(tc.yaml, func(t *testing.T) {
			cfg, err := Parse("t.yaml", strings.NewReader(tc.yaml))
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("error %v, want %q", err, tc.err)
			case tc.err == "" && strings.Contains(tc.yaml, "audit") && cfg.Log.Audit != "/var/log/taglock/audit.jsonl":
				t.Errorf("log.audit = %q", cfg.Log.Audit)
			}
		})
	}
}
