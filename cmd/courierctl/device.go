package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages"
	"github.com/courier-im/courier/messages/devicepb"
)

func tokenCmd() *cobra.Command {
	var app uint32
	var uid, secret string
	var ttl time.Duration
	c := &cobra.Command{
		Use:   "token",
		Short: "Mint a device token (HS256 JWT) for testing",
		RunE: func(*cobra.Command, []string) error {
			tok, err := gate.MintToken([]byte(secret), uint16(app), uid, ttl)
			if err != nil {
				return err
			}
			fmt.Println(tok)
			return nil
		},
	}
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringVar(&uid, "uid", "", "uid")
	c.Flags().StringVar(&secret, "secret", os.Getenv("COURIER_APP_SECRET"), "the app's token secret (env COURIER_APP_SECRET)")
	c.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "token lifetime (at most the node's gate.max-token-lifetime, 7 days by default)")
	return c
}

// demoDevice is a device that logs in, prints what it receives, acks it and
// keeps the connection alive.
type demoDevice struct {
	conn net.Conn
	app  uint16
	mu   sync.Mutex // serialises writes
	seq  uint32
	buf  []byte
}

func (d *demoDevice) send(cmd messages.Cmd, msgtype uint16, body proto.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq++
	var err error
	d.buf, err = messages.AppendMessage(d.buf[:0], messages.Header{Cmd: cmd, AppCode: d.app, MsgType: msgtype, Seq: d.seq}, body)
	if err != nil {
		return err
	}
	_, err = d.conn.Write(d.buf)
	return err
}

func show(name string, h messages.Header, m proto.Message) {
	s := ""
	if m != nil {
		b, _ := protojson.Marshal(m)
		s = string(b)
	}
	// Payloads are bytes; show them as text when they are.
	switch p := m.(type) {
	case *devicepb.S2C:
		if utf8.Valid(p.Payload) {
			s = fmt.Sprintf("msg_id=%s payload=%q", p.MsgId, p.Payload)
		}
	case *devicepb.C2CPush:
		if utf8.Valid(p.Payload) {
			s = fmt.Sprintf("msg_id=%s from=%s payload=%q", p.MsgId, p.FromUid, p.Payload)
		}
	}
	fmt.Printf("%s %-16s seq=%-6d msgtype=%-4d %s\n", time.Now().Format("15:04:05.000"), name, h.Seq, h.MsgType, s)
}

// commands reads "c2c UID TEXT", "c2s MSGTYPE TEXT" and "pull AFTER_SEQ"
// lines and sends them.
func (d *demoDevice) commands(in io.Reader) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		f := strings.SplitN(strings.TrimSpace(sc.Text()), " ", 3)
		var err error
		switch {
		case len(f) == 3 && f[0] == "c2c":
			err = d.send(messages.CmdC2C, 0, &devicepb.C2C{ToUid: f[1], ClientMsgId: strconv.FormatInt(time.Now().UnixNano(), 36), Payload: []byte(f[2])})
		case len(f) == 3 && f[0] == "c2s":
			var mt uint64
			if mt, err = strconv.ParseUint(f[1], 10, 16); err == nil {
				err = d.send(messages.CmdC2S, uint16(mt), &devicepb.C2S{ClientMsgId: strconv.FormatInt(time.Now().UnixNano(), 36), Payload: []byte(f[2])})
			}
		case len(f) == 2 && f[0] == "pull":
			var after uint64
			if after, err = strconv.ParseUint(f[1], 10, 32); err == nil {
				err = d.send(messages.CmdPull, 0, &devicepb.Pull{AfterSeq: uint32(after)})
			}
		case len(f) == 1 && f[0] == "":
		default:
			fmt.Fprintln(os.Stderr, `commands: "c2c UID TEXT", "c2s MSGTYPE TEXT", "pull AFTER_SEQ"`)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "send:", err)
		}
	}
}

func deviceCmd() *cobra.Command {
	var addr, uid, secret, token, deviceID string
	var app uint32
	var noAck, interactive bool
	c := &cobra.Command{
		Use:   "device",
		Short: "Act as a demo device: log in, print pushes, acknowledge them",
		RunE: func(*cobra.Command, []string) error {
			if token == "" {
				if secret == "" {
					return errors.New("--token or --secret is required")
				}
				var err error
				if token, err = gate.MintToken([]byte(secret), uint16(app), uid, 24*time.Hour); err != nil {
					return err
				}
			}
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			d := &demoDevice{conn: conn, app: uint16(app)}
			if err := d.send(messages.CmdLogin, 0, &devicepb.Login{Uid: uid, Token: token, DeviceId: deviceID,
				Platform: devicepb.Platform_DESKTOP, AppVersion: "courierctl"}); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
			defer stop()
			go func() { <-ctx.Done(); _ = d.send(messages.CmdLogout, 0, nil) }()
			if interactive {
				go d.commands(os.Stdin)
			}
			r := messages.NewReader(conn, 1<<20)
			var heartbeat *time.Ticker
			defer func() {
				if heartbeat != nil {
					heartbeat.Stop()
				}
			}()
			for {
				f, err := r.ReadFrame()
				if err != nil {
					if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
						return nil
					}
					return fmt.Errorf("connection: %w", err)
				}
				m, err := messages.DecodeBody(f.Cmd, f.Body)
				if err != nil {
					fmt.Printf("undecodable %v body: %v\n", f.Cmd, err)
					continue
				}
				show(f.Cmd.String(), f.Header, m)
				switch msg := m.(type) {
				case *devicepb.LoginAck:
					if msg.Code != devicepb.Code_OK {
						return fmt.Errorf("login refused: %v %s", msg.Code, msg.Reason)
					}
					hb := time.Duration(msg.HeartbeatSeconds) * time.Second
					heartbeat = time.NewTicker(hb)
					go func(t *time.Ticker) {
						for range t.C {
							if d.send(messages.CmdKeepalive, 0, nil) != nil {
								return
							}
						}
					}(heartbeat)
				case *devicepb.S2C:
					if !noAck && f.Seq != 0 {
						_ = d.send(messages.CmdS2CAck, f.MsgType, &devicepb.S2CAck{MsgId: msg.MsgId})
					}
				case *devicepb.C2CPush:
					if !noAck {
						_ = d.send(messages.CmdC2CPushAck, f.MsgType, &devicepb.C2CPushAck{MsgId: msg.MsgId})
					}
				case *devicepb.Kickout:
					return nil
				}
				if f.Cmd == messages.CmdLogoutAck {
					return nil
				}
			}
		},
	}
	c.Flags().StringVar(&addr, "gate", envOr("COURIER_GATE", "127.0.0.1:7000"), "gate address (env COURIER_GATE)")
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringVar(&uid, "uid", "", "uid")
	c.Flags().StringVar(&secret, "secret", os.Getenv("COURIER_APP_SECRET"), "the app's token secret, to mint a token (env COURIER_APP_SECRET)")
	c.Flags().StringVar(&token, "token", "", "a token (instead of --secret)")
	c.Flags().StringVar(&deviceID, "device-id", "courierctl", "device id")
	c.Flags().BoolVar(&noAck, "no-ack", false, "do not acknowledge pushes (to watch redelivery)")
	c.Flags().BoolVar(&interactive, "stdin", true, `read commands from standard input: "c2c UID TEXT", "c2s MSGTYPE TEXT", "pull AFTER_SEQ"`)
	return c
}
