"""Stand-in for @rules_cc//cc:defs.bzl: the names @bazel_tools loads, forwarded to native rules.

The real rules_cc at this point only wraps the native rules too; bwtf builds no
C++, so no behaviour beyond the forwarding is needed.
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)
