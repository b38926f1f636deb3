package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/courier-im/courier/cmd/courier-bench/internal/bench"
	"github.com/courier-im/courier/cmd/courier-bench/internal/procstat"
)

// apiFloodCmd plays an app-server with a valid key that opens many
// PushMany calls and never finishes their requests: what the node holds
// for it is what api.max-calls-in-flight and api.max-request-bytes bound.
func apiFloodCmd() *cobra.Command {
	d := bench.DefaultConfig()
	var addr, key string
	var calls, size, conns, pid int
	var hold time.Duration
	cmd := &cobra.Command{
		Use:   "api-flood",
		Short: "open many PushMany calls with a valid key whose requests never end; report how many the node holds and its RSS",
		Long: `api-flood opens --calls PushMany calls over --conns HTTP/2 connections with
the API key, each sending all but the last byte of a --size byte message,
and never the last one: the node reads and holds what it admits. After
--hold it prints how many calls were answered (refused) and, with
--node-pid, the node's largest RSS meanwhile. Nothing is pushed.`,
		Example: `  courier-bench api-flood --api 127.0.0.1:7001 --calls 1000 --node-pid $(pgrep -n courier)`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), hold)
			defer cancel()
			// A transport per connection: each keeps one HTTP/2 connection
			// for as many calls as the node lets it carry.
			ts := make([]*http.Transport, conns)
			for i := range ts {
				p := new(http.Protocols)
				p.SetUnencryptedHTTP2(true)
				ts[i] = &http.Transport{Protocols: p}
				defer ts[i].CloseIdleConnections()
			}
			var answered, refused atomic.Int64
			for i := range calls {
				go func() {
					body := make([]byte, 5+size) // the gRPC message prefix and the message
					binary.BigEndian.PutUint32(body[1:], uint32(size))
					req, err := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/courier.v1.Courier/PushMany",
						&unfinished{b: body[:len(body)-1], ctx: ctx})
					if err != nil {
						return
					}
					req.Header.Set("content-type", "application/grpc")
					req.Header.Set("te", "trailers")
					req.Header.Set("authorization", "Bearer "+key)
					resp, err := ts[i%len(ts)].RoundTrip(req)
					if err != nil {
						return
					}
					answered.Add(1)
					if resp.Header.Get("grpc-status") == "8" { // RESOURCE_EXHAUSTED
						refused.Add(1)
					}
					resp.Body.Close()
				}()
			}
			var peak int64
			t := time.NewTicker(250 * time.Millisecond)
			defer t.Stop()
		wait:
			for {
				if pid > 0 {
					if rss, err := procstat.RSS(pid); err == nil {
						peak = max(peak, rss)
					}
				}
				select {
				case <-ctx.Done():
					break wait
				case <-t.C:
				}
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "calls %d, answered before their request ended %d, of which refused (RESOURCE_EXHAUSTED) %d, so held %d\n",
				calls, answered.Load(), refused.Load(), int64(calls)-answered.Load())
			if pid > 0 {
				fmt.Fprintf(out, "node RSS, the most sampled every 250 ms: %d MB\n", peak>>20)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "api", d.API, "the node's gRPC API (plaintext)")
	f.StringVar(&key, "api-key", d.APIKey, "the app-server's API key")
	f.IntVar(&calls, "calls", 1000, "calls to open")
	f.IntVar(&size, "size", 4<<20-64, "bytes of each call's request message (all but the last are sent)")
	f.IntVar(&conns, "conns", 8, "HTTP/2 connections")
	f.DurationVar(&hold, "hold", 30*time.Second, "how long to hold the calls open")
	f.IntVar(&pid, "node-pid", 0, "the local node's process id, for its RSS")
	return cmd
}

// unfinished reads b, then blocks until ctx ends: a request body whose
// last byte never comes.
type unfinished struct {
	b   []byte
	ctx context.Context
}

func (u *unfinished) Read(p []byte) (int, error) {
	if len(u.b) == 0 {
		<-u.ctx.Done()
		return 0, io.ErrUnexpectedEOF
	}
	n := copy(p, u.b)
	u.b = u.b[n:]
	return n, nil
}
