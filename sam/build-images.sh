#!/usr/bin/env bash
# Build the voiceagent image for the Fargate task's CPU architecture and push it to Amazon ECR.
#
#   ECR_REPO=123456789012.dkr.ecr.us-east-1.amazonaws.com sam/build-images.sh
#
# Then deploy with the printed parameters (sam/cloud-deploy-infra-template.yml). Needs docker
# with buildx (an arm64 image builds on x86_64 through QEMU emulation: slower, but works) and
# the AWS CLI v2 with credentials that may push to the repository.
#
# The repository's tags are immutable (a tag always means the same image, so a deploy of tag X
# runs what was built as X), images are scanned on push, and a lifecycle policy keeps the newest
# 200 tagged images and expires untagged ones after 7 days. The script creates the repository
# that way, or brings an existing one there (IMMUTABLE, and the policy), saying what it changed.
# DRY_RUN=1 prints every aws and docker command instead of running it.
set -euo pipefail

# --- settings: edit here, or set them in the environment -----------------------------------------
# Registry host of your account and region (the original sample's ECR_REPO), e.g.
#   123456789012.dkr.ecr.us-east-1.amazonaws.com
ECR_REPO="${ECR_REPO:-}"
# Repository name: the template's ECRImageName parameter (created if it does not exist).
ECR_REPO_NAME="${ECR_REPO_NAME:-voiceagent}"
# Image tag: the template's ImageTag. Default: the git commit, so every build deploys as a new
# task definition; with local changes <commit>-dirty-<UTC yyyymmddHHMMSS>, since a tag cannot be
# pushed twice.
ECR_TAG="${ECR_TAG:-}"
# The template's CpuArchitecture parameter: ARM64 (Graviton, the default) or X86_64.
CPU_ARCHITECTURE="${CPU_ARCHITECTURE:-ARM64}"
# Region of the registry; default: read from ECR_REPO.
AWS_REGION="${AWS_REGION:-}"
DRY_RUN="${DRY_RUN:-0}"
# ----------------------------------------------------------------------------------------------------

fail() {
    printf 'build-images.sh: %s\n' "$*" >&2
    exit 2
}

# The command as a shell would read it back: arguments with anything but plain characters in
# single quotes.
show() {
    local line="+" arg quote="'" escaped="'\\''"
    for arg in "$@"; do
        if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
            line+=" $arg"
        else
            line+=" '${arg//$quote/$escaped}'"
        fi
    done
    printf '%s\n' "$line"
}

run() {
    if [ "$DRY_RUN" = 1 ]; then
        show "$@"
    else
        "$@"
    fi
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "$ECR_REPO" ]; then
    fail "set ECR_REPO to your registry host, e.g. ECR_REPO=123456789012.dkr.ecr.us-east-1.amazonaws.com" \
         "(your account id: aws sts get-caller-identity --query Account --output text)"
fi
if ! [[ "$ECR_REPO" =~ ^[0-9]{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$ ]]; then
    fail "ECR_REPO must be a registry host like 123456789012.dkr.ecr.us-east-1.amazonaws.com" \
         "(no https://, no repository name: that is ECR_REPO_NAME); it was '$ECR_REPO'"
fi
registry_region="${BASH_REMATCH[1]}"
if [ -z "$AWS_REGION" ]; then
    AWS_REGION="$registry_region"
elif [ "$AWS_REGION" != "$registry_region" ]; then
    fail "AWS_REGION ($AWS_REGION) is not the registry's region ($registry_region); unset AWS_REGION or fix ECR_REPO"
fi

if ! [[ "$ECR_REPO_NAME" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]]; then
    fail "set ECR_REPO_NAME to an ECR repository name (lower case, digits, . _ - /); it was '$ECR_REPO_NAME'"
fi

case "$CPU_ARCHITECTURE" in
    ARM64) platform=linux/arm64 ;;
    X86_64) platform=linux/amd64 ;;
    *) fail "set CPU_ARCHITECTURE to ARM64 or X86_64 (the template's CpuArchitecture); it was '$CPU_ARCHITECTURE'" ;;
esac

if [ -z "$ECR_TAG" ]; then
    if ! ECR_TAG="$(git rev-parse --short=12 HEAD 2>/dev/null)"; then
        fail "set ECR_TAG (not in a git checkout, so no commit to tag the image with)"
    fi
    if [ -n "$(git status --porcelain 2>/dev/null)" ]; then
        ECR_TAG="$ECR_TAG-dirty-$(date -u +%Y%m%d%H%M%S)"
    fi
fi
if ! [[ "$ECR_TAG" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]]; then
    fail "ECR_TAG must be a docker tag (letters, digits, _ . -, at most 128); it was '$ECR_TAG'"
fi

if [ "$DRY_RUN" != 1 ]; then
    command -v aws > /dev/null || fail "the AWS CLI v2 is not installed (https://docs.aws.amazon.com/cli/)"
    command -v docker > /dev/null || fail "docker is not installed"
    docker buildx version > /dev/null 2>&1 || fail "docker buildx is not available (install the buildx plugin)"
    docker info > /dev/null 2>&1 || fail "cannot reach the Docker engine (is it running?)"
fi

image="$ECR_REPO/$ECR_REPO_NAME:$ECR_TAG"
printf 'building %s for %s\n' "$image" "$platform" >&2

# Keep the newest 200 tagged images (a rollback needs the previous ones; a task definition whose
# image expired cannot start tasks any more), expire untagged ones (a build's leftovers) after
# 7 days.
lifecycle_policy='{"rules":[{"rulePriority":1,"description":"expire untagged images after 7 days","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":7},"action":{"type":"expire"}},{"rulePriority":2,"description":"keep the newest 200 tagged images","selection":{"tagStatus":"tagged","tagPatternList":["*"],"countType":"imageCountMoreThan","countNumber":200},"action":{"type":"expire"}}]}'

if [ "$DRY_RUN" = 1 ]; then
    show aws ecr describe-repositories --region "$AWS_REGION" --repository-names "$ECR_REPO_NAME" \
        --query 'repositories[0].imageTagMutability' --output text
    printf '# if the repository does not exist:\n'
    show aws ecr create-repository --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true
    printf '# if its tags are MUTABLE:\n'
    show aws ecr put-image-tag-mutability --region "$AWS_REGION" \
        --repository-name "$ECR_REPO_NAME" --image-tag-mutability IMMUTABLE
elif ! mutability="$(aws ecr describe-repositories --region "$AWS_REGION" \
        --repository-names "$ECR_REPO_NAME" --query 'repositories[0].imageTagMutability' \
        --output text 2>/dev/null)"; then
    printf 'creating ECR repository %s (immutable tags, scan on push)\n' "$ECR_REPO_NAME" >&2
    aws ecr create-repository --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true > /dev/null
elif [ "$mutability" = MUTABLE ]; then
    printf 'ECR repository %s: tags were MUTABLE, setting IMMUTABLE\n' "$ECR_REPO_NAME" >&2
    aws ecr put-image-tag-mutability --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --image-tag-mutability IMMUTABLE > /dev/null
else
    printf 'ECR repository %s: tags are %s\n' "$ECR_REPO_NAME" "$mutability" >&2
fi
# Put every time: the same policy again changes nothing.
if [ "$DRY_RUN" = 1 ]; then
    show aws ecr put-lifecycle-policy --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --lifecycle-policy-text "$lifecycle_policy"
else
    aws ecr put-lifecycle-policy --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --lifecycle-policy-text "$lifecycle_policy" > /dev/null
    printf 'ECR repository %s: lifecycle policy set (newest 200 tagged images kept, untagged ones expire after 7 days)\n' \
        "$ECR_REPO_NAME" >&2
fi

# An immutable tag is pushed once: a second push of it would fail after the whole build.
if [ "$DRY_RUN" = 1 ]; then
    printf '# stops here if the tag is already in the repository:\n'
    show aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --image-ids "imageTag=$ECR_TAG"
elif aws ecr describe-images --region "$AWS_REGION" --repository-name "$ECR_REPO_NAME" \
        --image-ids "imageTag=$ECR_TAG" > /dev/null 2>&1; then
    fail "$image is already in ECR and tags are immutable: deploy it as it is" \
         "(ImageTag=$ECR_TAG), or set ECR_TAG to a new tag"
fi

if [ "$DRY_RUN" = 1 ]; then
    printf '+ aws ecr get-login-password --region %s | docker login --username AWS --password-stdin %s\n' \
        "$AWS_REGION" "$ECR_REPO"
else
    aws ecr get-login-password --region "$AWS_REGION" \
        | docker login --username AWS --password-stdin "$ECR_REPO"
fi

# --provenance=false: a plain image manifest, which every ECS platform version pulls.
run docker buildx build --platform "$platform" --provenance=false \
    --tag "$image" --push .

if [ "$DRY_RUN" = 1 ]; then verb="would push"; else verb="pushed"; fi
cat <<EOF

$verb $image
deploy it with:
  sam deploy --template-file sam/cloud-deploy-infra-template.yml --capabilities CAPABILITY_IAM \\
      --parameter-overrides ECRRepoURL=$ECR_REPO ECRImageName=$ECR_REPO_NAME ImageTag=$ECR_TAG CpuArchitecture=$CPU_ARCHITECTURE ...
EOF
