package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPprof serves net/http/pprof on addr (for profiling under load,
// e.g. by courier-bench) and returns the bound address. It is off unless
// --pprof-addr is given: the profiles show the node's internals.
func startPprof(addr string, log *slog.Logger) (string, error) {
	// No authentication: loopback only (reach it through an SSH tunnel).
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return "", fmt.Errorf("%q: must be a loopback address (127.0.0.1:PORT): the profiles are served without authentication", addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	mux := http.NewServeMux()
	// Not /debug/pprof/cmdline: argv may hold secrets given as flags.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("courier: pprof server", "err", err)
		}
	}()
	return l.Addr().String(), nil
}
