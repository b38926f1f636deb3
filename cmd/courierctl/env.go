package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// courierctl's environment variables are COURIERCTL_ and the flag's name
// in upper case ('-' as '_'; the TLS flags name what they connect to:
// COURIERCTL_API_TLS_CA, COURIERCTL_GATE_TLS_CA). COURIER_* variables are
// the node's settings. courierctl used to read COURIER_* names too, and
// some meant something else to the node (COURIER_API_KEY is a bare key to
// courierctl but KEY=APPCODE to courier, which then refused to start):
// each old name still works, with a warning, where its value cannot be
// the node's.

// legacyEnv maps a variable of courierctl to its old name, and says when a
// value of the old name is courierctl's (not the node's setting of the
// same name). COURIER_API_TLS_CERT and COURIER_API_TLS_KEY are not here:
// they are the node's api.tls-cert and api.tls-key, paths either way.
var legacyEnv = map[string]struct {
	name string
	ours func(string) bool
}{
	"COURIERCTL_API":           {"COURIER_API", always},
	"COURIERCTL_GATE":          {"COURIER_GATE", always},
	"COURIERCTL_KEY":           {"COURIER_API_KEY", notNodeMap(false)},
	"COURIERCTL_KEY_FILE":      {"COURIER_API_KEY_FILE", notNodeMap(false)},
	"COURIERCTL_SECRET":        {"COURIER_APP_SECRET", notNodeMap(true)},
	"COURIERCTL_API_TLS":       {"COURIER_API_TLS", always},
	"COURIERCTL_API_TLS_CA":    {"COURIER_API_TLS_CA", always},
	"COURIERCTL_GATE_TLS":      {"COURIER_GATE_TLS", always},
	"COURIERCTL_GATE_TLS_CA":   {"COURIER_GATE_TLS_CA", always},
	"COURIERCTL_GATE_TLS_CERT": {"COURIER_GATE_TLS_CERT", always},
	"COURIERCTL_GATE_TLS_KEY":  {"COURIER_GATE_TLS_KEY", always},
}

func always(string) bool { return true }

// notNodeMap reports whether a value is not in the node's map syntax
// (KEY=VALUE,KEY=VALUE) with an appcode as each key (appKey, as in
// COURIER_APP_SECRET) or as each value ("*" allowed, as in
// COURIER_API_KEY).
func notNodeMap(appKey bool) func(string) bool {
	isApp := func(s string) bool {
		n, err := strconv.ParseUint(s, 10, 16)
		return err == nil && n > 0
	}
	return func(v string) bool {
		for _, kv := range strings.Split(v, ",") {
			k, val, ok := strings.Cut(kv, "=")
			switch {
			case !ok || k == "" || val == "":
				return true
			case appKey && !isApp(k):
				return true
			case !appKey && !isApp(val) && val != "*":
				return true
			}
		}
		return false
	}
}

// fromEnv returns the value of courierctl's variable name, or else of its
// old name if that is set and can only be courierctl's; legacy is the old
// name when it was used.
func fromEnv(name string) (v, legacy string) {
	if v := os.Getenv(name); v != "" {
		return v, ""
	}
	if old, ok := legacyEnv[name]; ok {
		if v := os.Getenv(old.name); v != "" && old.ours(v) {
			return v, old.name
		}
	}
	return "", ""
}

// legacyAnnotation marks a flag whose default came from an old variable:
// [old name, new name].
const legacyAnnotation = "courierctl-legacy-env"

// envString declares a string flag whose default is the variable env
// (else def). A secret's value is not shown as the default in --help.
func envString(fs *pflag.FlagSet, p *string, flag, env, def, usage string, secret bool) {
	v, old := fromEnv(env)
	if v == "" {
		v = def
	}
	fs.StringVar(p, flag, v, usage+" (env "+env+")")
	if secret {
		fs.Lookup(flag).DefValue = ""
	}
	if old != "" {
		_ = fs.SetAnnotation(flag, legacyAnnotation, []string{old, env})
	}
}

// envBool declares a bool flag whose default is the variable env being
// "true".
func envBool(fs *pflag.FlagSet, p *bool, flag, env, usage string) {
	v, old := fromEnv(env)
	fs.BoolVar(p, flag, v == "true", usage)
	if old != "" {
		_ = fs.SetAnnotation(flag, legacyAnnotation, []string{old, env})
	}
}

// warnLegacyEnv warns about each old variable the command c is about to
// use (its flag was not given).
func warnLegacyEnv(c *cobra.Command) {
	c.Flags().VisitAll(func(f *pflag.Flag) {
		if names, ok := f.Annotations[legacyAnnotation]; ok && !f.Changed {
			fmt.Fprintf(c.ErrOrStderr(), "courierctl: warning: %s is deprecated (COURIER_* variables are the node's settings): set %s instead\n", names[0], names[1])
		}
	})
}
