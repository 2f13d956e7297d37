#!/usr/bin/env python3
"""Writes COMPANIES Companies with DEVELOPERS Developers each, the shape the
scale benchmark measures: a Shared database and one volume per developer.

    tenants.py COMPANIES DEVELOPERS OUT_DIR [--single-file] [--prefix P]

One file per company (OUT_DIR/<company>.yaml), or with --single-file one
file OUT_DIR/tenants.yaml holding every document.
"""
import argparse
import os


def company(name, developers):
    # Room for every workspace at the default limits (2 CPUs, 4 GiB, 1 GiB
    # volume each) and the company controller.
    return f"""apiVersion: enclave.dev/v1alpha1
kind: Company
metadata:
  name: {name}
spec:
  displayName: Benchmark tenant {name}
  quota:
    cpu: "{max(8, 2 * (developers + 1))}"
    memory: {max(16, 4 * (developers + 1))}Gi
    pods: {developers + 10}
    storage: {max(200, developers + 10)}Gi
  database:
    mode: Shared
    deletionPolicy: Delete
  storage:
    volume:
      storageClassName: gp3
      size: 1Gi
    deletionPolicy: Delete
  secrets:
    deletionPolicy: Delete
  workspace:
    gitRepository: https://git.example.com/{name}/analytics.git
"""


def developer(company_name, index):
    role = "Admin" if index == 0 else "Developer"
    return f"""apiVersion: enclave.dev/v1alpha1
kind: Developer
metadata:
  name: dev{index:03d}
  namespace: company-{company_name}
spec:
  subject: "bench|{company_name}-{index:03d}"
  role: {role}
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("companies", type=int)
    parser.add_argument("developers", type=int)
    parser.add_argument("out_dir")
    parser.add_argument("--single-file", action="store_true")
    parser.add_argument("--prefix", default="bench")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    single = None
    if args.single_file:
        single = open(os.path.join(args.out_dir, "tenants.yaml"), "w")
    for c in range(args.companies):
        name = f"{args.prefix}{c:05d}"
        docs = [company(name, args.developers)] + [developer(name, d) for d in range(args.developers)]
        text = "---\n".join(docs)
        if single:
            single.write(("---\n" if c else "") + text)
        else:
            with open(os.path.join(args.out_dir, f"{name}.yaml"), "w") as f:
                f.write(text)
    if single:
        single.close()


if __name__ == "__main__":
    main()
