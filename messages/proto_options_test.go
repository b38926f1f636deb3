package messages_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	_ "github.com/courier-im/courier/messages/actorpb"
	_ "github.com/courier-im/courier/messages/apipb"
	_ "github.com/courier-im/courier/messages/devicepb"
)

// checkProtoFile returns what is wrong with a Courier .proto file's
// package and the options other languages' generators need. The
// descriptors checked are the ones compiled into the generated code, which
// `make check` (proto-check) keeps identical to protoc's output.
func checkProtoFile(fd *descriptorpb.FileDescriptorProto) []string {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fd.GetName()+": "+fmt.Sprintf(format, args...)) }
	pkg := fd.GetPackage()
	if !regexp.MustCompile(`^courier(\.[a-z]+)*\.v[0-9]+$`).MatchString(pkg) {
		bad("package %q: want courier[.name].vN", pkg)
	}
	if dir := strings.ReplaceAll(pkg, ".", "/") + "/"; !strings.HasPrefix(fd.GetName(), dir) {
		bad("the file is not in the directory of its package (%s)", dir)
	}
	o := fd.GetOptions()
	if !strings.HasPrefix(o.GetGoPackage(), "github.com/courier-im/courier/messages/") {
		bad("go_package %q: want github.com/courier-im/courier/messages/...", o.GetGoPackage())
	}
	if want := "im." + pkg; o.GetJavaPackage() != want {
		bad("java_package %q: want %q", o.GetJavaPackage(), want)
	}
	if !o.GetJavaMultipleFiles() {
		bad("java_multiple_files: want true")
	}
	if o.GetJavaOuterClassname() == "" {
		bad("java_outer_classname: missing")
	}
	for _, m := range fd.GetMessageType() {
		if m.GetName() == o.GetJavaOuterClassname() {
			bad("java_outer_classname %q: the name of a message", m.GetName())
		}
	}
	if !regexp.MustCompile(`^[A-Z]{3,5}$`).MatchString(o.GetObjcClassPrefix()) {
		bad("objc_class_prefix %q: want 3 to 5 capital letters", o.GetObjcClassPrefix())
	}
	if !strings.HasPrefix(o.GetSwiftPrefix(), "Courier") {
		bad("swift_prefix %q: want Courier...", o.GetSwiftPrefix())
	}
	var parts []string
	for _, p := range strings.Split(pkg, ".") {
		parts = append(parts, strings.ToUpper(p[:1])+p[1:])
	}
	if want := strings.Join(parts, "."); o.GetCsharpNamespace() != want {
		bad("csharp_namespace %q: want %q", o.GetCsharpNamespace(), want)
	}
	return errs
}

func TestProtoOptions(t *testing.T) {
	var files []*descriptorpb.FileDescriptorProto
	protoregistry.GlobalFiles.RangeFiles(func(f protoreflect.FileDescriptor) bool {
		if strings.HasPrefix(f.Path(), "courier/") {
			files = append(files, protodesc.ToFileDescriptorProto(f))
		}
		return true
	})
	if len(files) != 3 {
		t.Fatalf("%d courier .proto files registered, want 3 (device, api, actor)", len(files))
	}
	prefixes := map[string]string{}
	for _, fd := range files {
		for _, e := range checkProtoFile(fd) {
			t.Error(e)
		}
		p := fd.GetOptions().GetObjcClassPrefix()
		if other, dup := prefixes[p]; dup {
			t.Errorf("%s and %s share objc_class_prefix %q", fd.GetName(), other, p)
		}
		prefixes[p] = fd.GetName()
	}
	// The check catches a file without the options.
	bare := proto.Clone(files[0]).(*descriptorpb.FileDescriptorProto)
	bare.Options = &descriptorpb.FileOptions{GoPackage: bare.GetOptions().GoPackage}
	if errs := checkProtoFile(bare); len(errs) != 6 {
		t.Fatalf("a file without options: %d problems, want 6: %q", len(errs), errs)
	}
}
