package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/metadata"

	"github.com/courier-im/courier/messages/apipb"
)

func upstreamCmd() *cobra.Command {
	var f apiFlags
	var app, window uint32
	var msgtypes []uint
	c := &cobra.Command{
		Use:   "upstream",
		Short: "Act as a demo app-server: print the devices' C2S traffic and acknowledge it",
		RunE: func(cmd *cobra.Command, _ []string) error {
			types, err := toU32(msgtypes)
			if err != nil {
				return err
			}
			cl, _, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+f.key)
			st, err := cl.Upstream(ctx)
			if err != nil {
				return err
			}
			if err := sendUpstream(st, &apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Subscribe{Subscribe: &apipb.Subscribe{
				AppCode: app, Msgtypes: types, MaxInFlight: window}}}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "subscribing to app %d msgtypes %v; Ctrl-C to stop\n", app, msgtypes)
			for {
				d, err := st.Recv()
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				ids := make([]uint64, 0, len(d.Messages))
				for _, m := range d.Messages {
					p := fmt.Sprintf("%x", m.Payload)
					if utf8.Valid(m.Payload) {
						p = fmt.Sprintf("%q", m.Payload)
					}
					// uid and client_msg_id come from devices: quoted,
					// so that one cannot write lines of its own.
					fmt.Fprintf(f.out, "%s C2S app=%d msgtype=%d uid=%q msg_id=%s client_msg_id=%q attempt=%d payload=%s\n",
						time.UnixMilli(m.ReceivedAtMs).Format("15:04:05.000"), m.AppCode, m.Msgtype, m.Uid, m.MsgId, m.ClientMsgId, m.Attempt, p)
					ids = append(ids, m.DeliveryId)
				}
				if err := sendUpstream(st, &apipb.UpstreamRequest{Kind: &apipb.UpstreamRequest_Ack{Ack: &apipb.UpstreamAck{DeliveryIds: ids}}}); err != nil {
					return err
				}
			}
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().UintSliceVar(&msgtypes, "msgtype", nil, "msgtypes to take (default: all of the app's)")
	c.Flags().Uint32Var(&window, "window", 0, "most unacknowledged deliveries (0: the node's default)")
	return c
}

// sendUpstream sends r on st. A Send that finds the stream ended by the
// node returns io.EOF; the node's reason (a refused subscription, say)
// comes with Recv after whatever it sent before, and that is what is
// returned (deliveries skipped here are unacknowledged: the node sends
// them again).
func sendUpstream(st apipb.Courier_UpstreamClient, r *apipb.UpstreamRequest) error {
	err := st.Send(r)
	if !errors.Is(err, io.EOF) {
		return err
	}
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}

// toU32 converts --msgtype values; one that does not fit a uint32 is a
// usage error (it was cut to its low 32 bits, another msgtype).
func toU32(v []uint) ([]uint32, error) {
	out := make([]uint32, len(v))
	for i, x := range v {
		if x > math.MaxUint32 {
			return nil, usageError{fmt.Errorf("--msgtype %d: out of range (msgtypes are 0 to 65535)", x)}
		}
		out[i] = uint32(x)
	}
	return out, nil
}
